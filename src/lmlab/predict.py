"""`lmlab predict ckpt_path=... input=FILE output=FILE`: one JSON line of predictions per input row."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from lmlab.app import run_app
from lmlab.errors import RunDirError

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
    # The input file replaces the data files; the columns and parsing options are the checkpoint's.
    data_override = OmegaConf.create({"files": {"predict": str(Path(str(cfg.input)).expanduser().resolve())}})
    module, datamodule, _, run_cfg, meta = restore_task(cfg, splits=())
    data_cfg = OmegaConf.merge(OmegaConf.create(OmegaConf.to_container(run_cfg.data, resolve=True)), data_override)
    datamodule.cfg = data_cfg
    datamodule.splits = ("predict",)
    datamodule.prepare_data()
    trainer = build_eval_trainer(run_cfg, str(cfg.paths.output_dir))
    outputs = trainer.predict(module, dataloaders=datamodule.predict_dataloader())  # batches, loader order
    raw, _ = load_split(data_cfg, "predict", None)
    records = module.prediction_records(outputs, datamodule.eval_order("predict"), raw, data_cfg)
    atomic_write_text(output, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    log.info("wrote %d predictions to %s", len(records), output)
    return output


def main() -> None:
    run_app("predict", predict)


if __name__ == "__main__":
    main()
