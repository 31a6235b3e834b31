"""Fetch the data sets into data/download/, checksummed, archives extracted. (arcpipe.stages.download)"""
from arcpipe.stages import main

if __name__ == "__main__":
    raise SystemExit(main("download"))
