"""Face detection: our MTCNN (published weights), the face-choice rule and per-data-set presets."""
from .choose import choose_face, face_choice_scores, keep_face
from .mtcnn import MTCNN, Detections
from .presets import PRESETS, Preset, fallback_box, preset_for

__all__ = ["MTCNN", "Detections", "choose_face", "face_choice_scores", "keep_face", "PRESETS", "Preset", "preset_for", "fallback_box"]
