# pack_clean -> train -> evaluate (train.pack_dir: the refined pack; data/pack trains on the raw
# set). The checkpoint folder is not an output of either engine: Snakemake would delete it before
# the job, and a job started again after a crash resumes from it.


rule train:
    input:
        script="scripts/train.py",
        code=stage_code("train"),
        sections=section_input("train"),
        pack=config["train"]["pack_dir"],
        evalpack=config["evalpack"]["out_dir"],
    output:
        model=directory(config["train"]["out_dir"]),
        metrics=f"{config['train']['live_dir']}/metrics.json",
        plots=directory(f"{config['train']['live_dir']}/plots/metrics"),
    params:
        train=config["train"],
        launcher=train_launcher("train"),
    threads: max(1, config["train"]["workers"])
    resources:
        **train_resources("train"),
    log:
        "logs/snakemake/train.log",
    shell:
        "{params.launcher}$ARCPIPE_PYTHON scripts/train.py --params $ARCPIPE_PARAMS > {log} 2>&1"
