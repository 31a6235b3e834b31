"""Build verification .bin packs from aligned sets and their pairs lists: data/evalpack/<set>.bin. (arcpipe.stages.evalpack)"""
from arcpipe.stages import main

if __name__ == "__main__":
    raise SystemExit(main("evalpack"))
