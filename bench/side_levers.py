"""Issue 14's side-word experiments: train stages from a demo's folder and score teacher-forced side words.

    python -m bench.side_levers NAME s1,lora 4,2 3e-3,1e-3 --start out/demo/base --data out/demo/data \
        [--cfg '{"num_memory_queries": 32}'] [--lora_r 16] [--dropout 0.7]

`--cfg` rebuilds the model with those config fields changed (the connector re-initialised with seed 0, every other
weight kept). After each stage: `bench.grounding_probe.side_word_accuracy` on 400 training and all test studies,
appended to out/side_levers/NAME/results.jsonl. The README's table "Measured this session" came from these runs
(start: the demo's base of committed stand-ins; `lora` = image-only LoRA stage).
"""
import sys, json, argparse, torch


def main():
    torch.set_num_threads(1)
    ap = argparse.ArgumentParser()
    ap.add_argument("name"); ap.add_argument("stages"); ap.add_argument("epochs"); ap.add_argument("lrs")
    ap.add_argument("--cfg", default="{}"); ap.add_argument("--start", required=True)
    ap.add_argument("--data", required=True); ap.add_argument("--dropout", type=float, default=0.7)
    ap.add_argument("--lora_r", type=int, default=16)
    a = ap.parse_args()
    from pathlib import Path
    from datasets import load_from_disk
    from s2d_align.training.run import run_stage
    from s2d_align.generation import load_model
    from bench.grounding_probe import side_word_accuracy
    out = Path("out/side_levers") / a.name
    cur = a.start
    cfg = json.loads(a.cfg)
    if cfg:
        from modeling_s2d import S2DAlignForConditionalGeneration
        from processing_s2d import S2DAlignProcessor
        from configuration_s2d import S2DAlignConfig
        old = S2DAlignForConditionalGeneration.from_pretrained(cur); proc = S2DAlignProcessor.from_pretrained(cur)
        conf = old.config.to_dict(); conf.update(cfg)
        conf = S2DAlignConfig(**{k: v for k, v in conf.items() if k not in ("architectures", "auto_map", "transformers_version")})
        torch.manual_seed(0)
        new = S2DAlignForConditionalGeneration(conf)
        sd = old.state_dict(); keep = {k: v for k, v in sd.items() if not k.startswith("model.connector") and k in new.state_dict() and new.state_dict()[k].shape == v.shape}
        print("kept", len(keep), "of", len(sd)); new.load_state_dict(keep, strict=False)
        new.save_pretrained(out / "base"); proc.num_memory_queries = conf.num_memory_queries; proc.save_pretrained(out / "base")
        cur = str(out / "base")
    ds = load_from_disk(a.data)
    for st, ep, lr in zip(a.stages.split(","), a.epochs.split(","), a.lrs.split(",")):
        kw = dict(lora_r=a.lora_r) if st != "s1" else {}
        cur = run_stage(cur, a.data, str(out / st), st, num_train_epochs=float(ep), learning_rate=float(lr),
                        per_device_train_batch_size=16, seed=0, use_cpu=True, bf16=False, gradient_checkpointing=False,
                        activation_checkpointing=False, save_strategy="no", logging_steps=50, disable_tqdm=True,
                        modality_dropout=a.dropout if st not in ("s1", "lora", "align") else 0.0, **kw)
        m, p = load_model(cur, device="cpu")
        r = dict(stage=st, train=side_word_accuracy(m, p, ds["train"].select(range(400)))["accuracy"],
                 test=side_word_accuracy(m, p, ds["test"])["accuracy"])
        print("RESULT", a.name, r, flush=True)
        with open(out / "results.jsonl", "a") as f: f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
