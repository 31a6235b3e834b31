# pack -> train_bootstrap -> features -> clean -> pack_clean (-> train, in train.smk).
# The bootstrap's checkpoint folder, like train's, is not an output: a job started again after a
# crash resumes from it. Features run one job per set (features.sets): the raw pack and every
# evaluation set the overlap rule compares with.
rule train_bootstrap:
    input:
        script="scripts/train_bootstrap.py",
        code=stage_code("train_bootstrap"),
        sections=section_input("train_bootstrap"),
        pack=config["train_bootstrap"]["pack_dir"],
        evalpack=config["evalpack"]["out_dir"],
    output:
        model=directory(config["train_bootstrap"]["out_dir"]),
        metrics=f"{config['train_bootstrap']['live_dir']}/metrics.json",
        plots=directory(f"{config['train_bootstrap']['live_dir']}/plots/metrics"),
    params:
        train_bootstrap=config["train_bootstrap"],
        launcher=train_launcher("train_bootstrap"),
    threads: max(1, config["train_bootstrap"]["workers"])
    resources:
        **train_resources("train_bootstrap"),
    log:
        "logs/snakemake/train_bootstrap.log",
    shell:
        "{params.launcher}$ARCPIPE_PYTHON scripts/train_bootstrap.py --params $ARCPIPE_PARAMS > {log} 2>&1"


rule features:
    input:
        script="scripts/features.py",
        code=stage_code("features"),
        sections=section_input("features"),
        source=_feature_source,
        model=_feature_model,
    output:
        directory(f"{FEATURES}/{{dataset}}"),
    params:
        features=config["features"],
    threads: config["features"]["workers"]
    log:
        "logs/snakemake/features_{dataset}.log",
    shell:
        "$ARCPIPE_PYTHON scripts/features.py --params $ARCPIPE_PARAMS --dataset {wildcards.dataset} "
        "--workers {threads} > {log} 2>&1"


rule clean:
    input:
        script="scripts/clean.py",
        code=stage_code("clean"),
        sections=section_input("clean"),
        features=config["clean"]["features_dir"],
        eval_features=sorted(set(config["clean"].get("eval_features", {}).values())),
        bootstrap=config["clean"]["bootstrap_dir"],
        pack=config["clean"]["pack_dir"],
        detect=f"{DETECT}/{config['pack']['dataset']}/manifest.parquet",
        align=f"{ALIGN}/{config['pack']['dataset']}/manifest.parquet",
        truth=[in_dag(config["clean"]["ground_truth"])] if config["clean"].get("ground_truth") else [],
    output:
        out=directory(config["clean"]["out_dir"]),
        metrics=config["clean"]["metrics"],
    params:
        clean=config["clean"],
    log:
        "logs/snakemake/clean.log",
    shell:
        "$ARCPIPE_PYTHON scripts/clean.py --params $ARCPIPE_PARAMS > {log} 2>&1"


rule pack_clean:
    input:
        script="scripts/pack_clean.py",
        code=stage_code("pack_clean"),
        sections=section_input("pack_clean"),
        pack=config["pack_clean"]["pack_dir"],
        clean=config["pack_clean"]["clean_dir"],
    output:
        directory(config["pack_clean"]["out_dir"]),
    params:
        pack_clean=config["pack_clean"],
    log:
        "logs/snakemake/pack_clean.log",
    shell:
        "$ARCPIPE_PYTHON scripts/pack_clean.py --params $ARCPIPE_PARAMS > {log} 2>&1"
