"""Generate the embedded sample data set (data/sample) from params.yaml `sample`. (arcpipe.stages.sample)"""
from arcpipe.stages import main

if __name__ == "__main__":
    raise SystemExit(main("sample"))
