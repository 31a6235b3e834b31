"""Column names shared by the detect and align manifests (and whoever reads them)."""

LANDMARK_COLUMNS = [f"lmk_{c}{i}" for i in range(1, 6) for c in "xy"]
BOX_COLUMNS = ["box_x1", "box_y1", "box_x2", "box_y2"]
STATUS_WITH_CROP = ("ok", "fallback")
