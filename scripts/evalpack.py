"""Stage `evalpack`: aligned verification sets + pairs lists -> <set>.bin packs."""
from arcpipe.evalpack import run_evalpack
from arcpipe.stage import run_stage

if __name__ == "__main__":
    raise SystemExit(run_stage("evalpack", run_evalpack))
