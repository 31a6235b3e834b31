"""Stage `pack`: aligned faces -> insightface RecordIO (train.rec, train.idx, property)."""
from arcpipe.pack import run_pack
from arcpipe.stage import run_stage

if __name__ == "__main__":
    raise SystemExit(run_stage("pack", run_pack))
