# download -> sample -> detect -> align -> pack / evalpack. Large stages shard: with <stage>.shards = K > 1,
# one job per shard (`--shard I/K`) writes a part, and the job without --shard merges the parts;
# detect's shard jobs start from one listing of the source (detect_list, `--list`).

wildcard_constraints:
    dataset="[^/]+",
    i=r"\d{5}",
    k=r"\d{5}",


# Downloads run on the host that runs Snakemake, never as cluster jobs: compute nodes often have no
# route to the internet, while the submit host does (and the work is network, not CPU).
localrules:
    download,


rule download:
    input:
        script="scripts/download.py",
        code=stage_code("download"),
        sections=section_input("download"),
    output:
        directory(f"{DOWNLOAD}/{{dataset}}"),
    params:
        dataset=lambda w: config["download"]["datasets"][w.dataset],
    log:
        "logs/snakemake/download_{dataset}.log",
    shell:
        "$ARCPIPE_PYTHON scripts/download.py --params $ARCPIPE_PARAMS --dataset {wildcards.dataset} > {log} 2>&1"


rule sample:
    input:
        script="scripts/sample.py",
        code=stage_code("sample"),
        sections=section_input("sample"),
        photos=sample_photos,
    output:
        directory(config["sample"]["out_dir"]),
    params:
        sample=config["sample"],
    log:
        "logs/snakemake/sample.log",
    shell:
        "$ARCPIPE_PYTHON scripts/sample.py --params $ARCPIPE_PARAMS > {log} 2>&1"


rule detect_list:
    input:
        script="scripts/detect.py",
        code=stage_code("detect"),
        source=lambda w: source_of(w.dataset),
    output:
        f"{DETECT}/{{dataset}}/listing.parquet",
    params:
        dataset=lambda w: config["detect"]["datasets"][w.dataset],
    log:
        "logs/snakemake/detect_{dataset}_list.log",
    shell:
        "$ARCPIPE_PYTHON scripts/detect.py --params $ARCPIPE_PARAMS --dataset {wildcards.dataset} --list > {log} 2>&1"


rule detect_part:
    input:
        script="scripts/detect.py",
        code=stage_code("detect"),
        sections=section_input("detect"),
        source=lambda w: source_of(w.dataset),
        listing=f"{DETECT}/{{dataset}}/listing.parquet",
    output:
        f"{DETECT}/{{dataset}}/parts/part-{{i}}-of-{{k}}.parquet",
    params:
        detect=config["detect"],
        shard=lambda w: f"{int(w.i)}/{int(w.k)}",
    threads: config["detect"]["workers"]
    log:
        "logs/snakemake/detect_{dataset}_{i}_of_{k}.log",
    shell:
        "$ARCPIPE_PYTHON scripts/detect.py --params $ARCPIPE_PARAMS --dataset {wildcards.dataset} "
        "--shard {params.shard} --workers {threads} > {log} 2>&1"


rule detect:
    input:
        script="scripts/detect.py",
        code=stage_code("detect"),
        sections=section_input("detect"),
        source=lambda w: source_of(w.dataset),
        parts=_parts(DETECT, config["detect"]["shards"]),
        listing=_listing(config["detect"]["shards"]),
    output:
        manifest=f"{DETECT}/{{dataset}}/manifest.parquet",
        summary=f"{DETECT}/{{dataset}}/summary.json",
    params:
        detect=config["detect"],
    threads: config["detect"]["workers"]
    log:
        "logs/snakemake/detect_{dataset}.log",
    shell:
        "$ARCPIPE_PYTHON scripts/detect.py --params $ARCPIPE_PARAMS --dataset {wildcards.dataset} "
        "--workers {threads} > {log} 2>&1"


rule align_part:
    input:
        script="scripts/align.py",
        code=stage_code("align"),
        sections=section_input("align"),
        detect=f"{DETECT}/{{dataset}}/manifest.parquet",
        source=lambda w: source_of(w.dataset),
    output:
        f"{ALIGN}/{{dataset}}/parts/part-{{i}}-of-{{k}}.parquet",
    params:
        align=config["align"],
        dataset=lambda w: config["detect"]["datasets"][w.dataset],
        shard=lambda w: f"{int(w.i)}/{int(w.k)}",
    threads: config["align"]["workers"]
    log:
        "logs/snakemake/align_{dataset}_{i}_of_{k}.log",
    shell:
        "$ARCPIPE_PYTHON scripts/align.py --params $ARCPIPE_PARAMS --dataset {wildcards.dataset} "
        "--shard {params.shard} --workers {threads} > {log} 2>&1"


rule align:
    input:
        script="scripts/align.py",
        code=stage_code("align"),
        sections=section_input("align"),
        detect=f"{DETECT}/{{dataset}}/manifest.parquet",
        source=lambda w: source_of(w.dataset),
        parts=_parts(ALIGN, config["align"]["shards"]),
    output:
        rec=f"{ALIGN}/{{dataset}}/faces.rec",
        idx=f"{ALIGN}/{{dataset}}/faces.idx",
        manifest=f"{ALIGN}/{{dataset}}/manifest.parquet",
        sheet=f"{ALIGN}/{{dataset}}/contact_sheet.jpg",
        summary=f"{ALIGN}/{{dataset}}/summary.json",
    params:
        align=config["align"],
        dataset=lambda w: config["detect"]["datasets"][w.dataset],
        max_pixels=config["detect"].get("max_pixels"),
    threads: config["align"]["workers"]
    log:
        "logs/snakemake/align_{dataset}.log",
    shell:
        "$ARCPIPE_PYTHON scripts/align.py --params $ARCPIPE_PARAMS --dataset {wildcards.dataset} "
        "--workers {threads} > {log} 2>&1"


rule pack:
    input:
        script="scripts/pack.py",
        code=stage_code("pack"),
        sections=section_input("pack"),
        rec=f"{ALIGN}/{config['pack']['dataset']}/faces.rec",
        manifest=f"{ALIGN}/{config['pack']['dataset']}/manifest.parquet",
    output:
        directory(config["pack"]["out_dir"]),
    params:
        pack=config["pack"],
        align_quality=config["align"]["jpeg_quality"],
    log:
        "logs/snakemake/pack.log",
    shell:
        "$ARCPIPE_PYTHON scripts/pack.py --params $ARCPIPE_PARAMS > {log} 2>&1"


rule evalpack:
    input:
        script="scripts/evalpack.py",
        code=stage_code("evalpack"),
        sections=section_input("evalpack"),
        aligned=expand(f"{ALIGN}/{{dataset}}/manifest.parquet", dataset=DATASETS),
    output:
        directory(config["evalpack"]["out_dir"]),
    params:
        evalpack=config["evalpack"],
    log:
        "logs/snakemake/evalpack.log",
    shell:
        "$ARCPIPE_PYTHON scripts/evalpack.py --params $ARCPIPE_PARAMS > {log} 2>&1"
