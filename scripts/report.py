"""Write reports/results.md and results.csv: our metrics beside the ArcFace paper's numbers. (arcpipe.stages.report)"""
from arcpipe.stages import main

if __name__ == "__main__":
    raise SystemExit(main("report"))
