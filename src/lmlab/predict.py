"""`lmlab predict ckpt_path=... input=FILE output=FILE`: one JSON line of predictions per input row."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from lmlab.app import run_app
from lmlab.errors import RunDirError

UNAMBIGUOUS_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".conll")
log = logging.getLogger("lmlab.predict")


def predict(cfg: DictConfig) -> Path:
    """Write predictions for ``cfg.input`` to ``cfg.output`` (JSONL); returns the output path."""
    from lmlab.app import use_hydra_logging
    from lmlab.builders import build_eval_trainer, restore_task
    from lmlab.data.loading import load_split
    from lmlab.run_dir import atomic_write_text

    use_hydra_logging()
    output = Path(str(cfg.output)).expanduser()
    if output.exists() and not cfg.overwrite:
        raise RunDirError(f"output={output} already exists; lmlab does not overwrite it. Fix: another output= "
                          "path, or overwrite=true.")
    # The input file replaces the data files; the columns and parsing options are the checkpoint's, except
    # the format where the input's extension names one (a JSONL input to a run trained on CoNLL files).
    input_path = Path(str(cfg.input)).expanduser().resolve()
    data_override = OmegaConf.create({"files": {"predict": str(input_path)}})
    if (fmt := input_format(input_path)) is not None:
        data_override.format = fmt
    module, datamodule, _, run_cfg, meta = restore_task(cfg, splits=())
    data_cfg = OmegaConf.merge(OmegaConf.create(OmegaConf.to_container(run_cfg.data, resolve=True)), data_override)
    datamodule.cfg = data_cfg
    datamodule.splits = ("predict",)
    datamodule.prepare_data()
    precision = predict_precision(cfg, run_cfg, module)
    if "mixed" in str(precision):  # autocast: near ties get an fp32 second look (TaskModule.recheck_near_ties)
        module.recheck_margin = float(cfg.recheck_margin)
    trainer = build_eval_trainer(run_cfg, str(cfg.paths.output_dir), precision)
    outputs = trainer.predict(module, dataloaders=datamodule.predict_dataloader())  # batches, loader order
    order = datamodule.eval_order("predict")
    if module.recheck_margin:
        log.info("precision %s: %d of %d rows had a near tie (logit gap < %g) and were run again in fp32",
                 precision, module.rechecked_rows, len(order), module.recheck_margin)
    raw, _ = load_split(data_cfg, "predict", None)
    records = module.prediction_records(outputs, order, raw, data_cfg)
    atomic_write_text(output, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    log.info("wrote %d predictions to %s", len(records), output)
    return output


def input_format(path: Path) -> str | None:
    """The format ``path``'s extension names unambiguously (.jsonl, .json, .csv, .tsv, .conll), unless data.format
    is given on the command line; None keeps the run's (a .txt may be CoNLL, TSV or running text)."""
    from hydra.core.hydra_config import HydraConfig

    from lmlab.app import override_key
    from lmlab.data.loading import EXTENSIONS

    given = HydraConfig.get().overrides.task if HydraConfig.initialized() else []
    suffix = path.suffix.lower()
    if suffix not in UNAMBIGUOUS_SUFFIXES or any(override_key(o) == "data.format" for o in given):
        return None
    return EXTENSIONS[suffix]


def predict_precision(cfg: DictConfig, run_cfg: DictConfig, module: Any) -> Any:
    """``precision``: a Lightning precision as given, or for ``auto`` bf16-mixed where that is faster and the
    labels stay those of fp32 (an fp32 run, a CPU with native bf16, a task that re-checks near ties), else
    the run's trainer.precision."""
    if str(cfg.precision) != "auto":
        return cfg.precision
    from lmlab import precision as prec

    accelerator = str(run_cfg.trainer.accelerator)
    run_precision = prec.concrete(run_cfg.trainer.precision, accelerator)
    if run_precision in prec.FP32 and module.rechecks_ties and prec.on_cpu(accelerator) and prec.native_cpu_bf16():
        return "bf16-mixed"
    return run_precision


def main() -> None:
    run_app("predict", predict)


if __name__ == "__main__":
    main()
