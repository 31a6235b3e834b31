"""Align detected faces to the ArcFace template: data/align/<NAME>/ (faces.rec/.idx, manifest). (arcpipe.stages.align)"""
from arcpipe.stages import main

if __name__ == "__main__":
    raise SystemExit(main("align"))
