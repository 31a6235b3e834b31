"""Pack aligned faces into insightface training RecordIO: data/pack/ (train.rec/.idx, property). (arcpipe.stages.pack)"""
from arcpipe.stages import main

if __name__ == "__main__":
    raise SystemExit(main("pack"))
