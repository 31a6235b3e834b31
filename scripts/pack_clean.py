"""Repack the cleaned training set: the kept images under their new labels, data/pack_clean/. (arcpipe.stages.pack_clean)"""
from arcpipe.stages import main

if __name__ == "__main__":
    raise SystemExit(main("pack_clean"))
