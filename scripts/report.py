"""Write reports/results.md and results.csv: our metrics beside the ArcFace paper's numbers."""
from arcpipe.report import run_report
from arcpipe.stage import run_stage

if __name__ == "__main__":
    raise SystemExit(run_stage("report", run_report))
