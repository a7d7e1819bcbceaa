"""Render bench/results/*.json (step_speed, dept_vs_plain, profile_step, comm_memory, scaling; and
for the core: core_speed, bank_traffic, compare_main) into bench/RESULTS.md, between the markers
below; every other section of RESULTS.md (e.g. the data pipeline's) is left as is.

  python bench/write_results.py
"""
from __future__ import annotations

import json
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "bench", "RESULTS.md")
BEGIN, END = "<!-- speed-comm-memory-scaling:begin -->", "<!-- speed-comm-memory-scaling:end -->"
CORE_BEGIN, CORE_END = "<!-- core:begin -->", "<!-- core:end -->"


def load(name):
  path = os.path.join(ROOT, "bench", "results", name + ".json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def human(n, unit="B"):
  for k, s in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
    if abs(n) >= k:
      return f"{n / k:.3g} {s}{unit}"
  return f"{n:.3g} {unit}"


def speed_section(d, first=True):
  head = ["## 1. Step speed (bench/step_speed.py)", ""] if first else []
  out = head + [f"Run: `{d['command']}`", "",
         f"{d['date']}, jax {d['jax']}, {d['cpus']}-core x86_64 CPU, no GPU (this task had no GPU "
         "machine: nothing here is measured on one). The machine was shared: other jobs kept the "
         "1-minute load average at the values listed, so absolute numbers are low; every ratio "
         "below is of candidates interleaved in one process (A B C ... repeated, median).",
         "",
         "FLOPs per training token = 6 (N_matmul + V D) + 12 n_layers L D (documented in "
         "bench/step_speed.py; full L x L attention, no causal discount). Peak = a jitted f32 "
         "2048^3 matmul timed as one more interleaved candidate; MFU = FLOPs/token x tokens/s / "
         "that peak. Every JAX candidate runs the defaults (f32 on CPU, scanned layers, remat "
         "dots_no_batch, explicit attention) but for the one setting its name says.", ""]
  for r in d["rows"]:
    K = r["sources"]
    out += [f"### {r['model']}: d_model {r['d_model']}, {r['n_layers']} layers, {r['n_heads']} "
            f"heads, d_ff {r['d_ff']}, vocab {r['vocab_rows']}, batch {r['batch']} x "
            f"{r['seq_len']} per source, {K} sources; peak in run "
            f"{r['peak_gflops_in_run']:.0f} GFLOP/s; load {r['load_avg_1min'][0]:.1f}-"
            f"{r['load_avg_1min'][1]:.1f}", "",
            "| candidate | step (ms) | tokens/s | MFU |", "|---|---|---|---|"]
    for k, s in r["step_s"].items():
      out.append(f"| {k} | {s * 1e3:.1f} | {r['tokens_per_s'][k]:,.0f} | "
                 f"{100 * r['mfu'][k]:.1f}% |")
    out += ["", "| ratio (tokens/s, same run) | value | target |", "|---|---|---|",
            f"| DEPT local step (1 source) / plain JAX step | {r['ratio_dept_vs_plain']:.3f} | "
            ">= 0.97 |",
            f"| plain JAX / torch eager, f32 | {r['ratio_jax_vs_torch']:.3f} | >= 1.0 |",
            f"| DEPT local step / torch eager | {r['ratio_dept_vs_torch']:.3f} | >= 1.0 |",
            f"| DEPT {K} sources on one device / torch eager (per token) | "
            f"{r[f'ratio_dept_{K}src_vs_torch']:.3f} | |"]
    for key, label in (("ratio_remat_vs_none", "remat dots_no_batch / none"),
                       ("ratio_explicit_vs_xla_attention",
                        "explicit attention / jax.nn.dot_product_attention (XLA)"),
                       ("ratio_unrolled_vs_scan", "unrolled / scanned layers"),
                       ("ratio_bf16_vs_f32", "bfloat16 / float32 compute")):
      if key in r:
        out.append(f"| plain JAX: {label} | {r[key]:.3f} | |")
    if f"ratio_dept_{K}src_loop_vs_vmap" in r:
      out.append(f"| DEPT {K} sources: slot loop / vmap | "
                 f"{r[f'ratio_dept_{K}src_loop_vs_vmap']:.3f} | |")
    out.append("")
  return out


def dept_vs_plain_section(d):
  out = [f"### DEPT local step vs plain step, long blocks, each built twice (`{d['command']}`)", "",
         f"{d['date']}. Ratio = plain / DEPT step time, both copies pooled; `noise` = the plain "
         "step against its own second copy in the same run.", "",
         "| model | plain (ms) | DEPT (ms) | DEPT / plain (tokens/s) | noise | load |",
         "|---|---|---|---|---|---|"]
  for r in d["rows"]:
    t = r["step_s"]
    out.append(f"| {r['model']} | {(t['plain'] + t['plain_again']) * 500:.1f} | "
               f"{(t['dept'] + t['dept_again']) * 500:.1f} | {r['ratio_dept_vs_plain']:.3f} | "
               f"{r['noise_plain_vs_plain_again']:.3f} | {r['load_avg_1min']:.1f} |")
  return out


def comm_section(d):
  rows = d["rows"]
  out = ["## 2. Communication per variant (bench/comm_memory.py)", "",
         f"    {d['command']}", "",
         f"{d['date']}, jax {d['jax']}. Each preset compiled (AOT) for one fake CPU device per "
         "source, as the paper ran one worker per source. Bytes are the payloads of the "
         "collectives in the compiled HLO, counted per execution (a collective inside the scan "
         "over layers counts n_layers times; bench/hlo_loops.py). DEPT: collectives whose replica "
         "groups span `source` slices in the outer step, once per round, so per training step = "
         "outer / local_steps; the local step's cross-source bytes are 0 for every variant "
         "compiled. STD: every collective of its data-parallel step (the gradient all-reduce), "
         "every step. Parameter counts: body and per-source table; STD's table is the global one.",
         "", "| preset | variant | per outer step | per training step | vs STD per step | "
         "local step across sources |", "|---|---|---|---|---|---|"]
  std = {r["preset"]: r for r in rows if r["variant"] == "std"}
  for r in rows:
    s = std[r["preset"]]["bytes_per_step"]
    per_outer = "every step" if r["variant"] == "std" else human(r["outer_bytes"])
    local = r.get("local_cross_source_bytes")
    out.append(f"| {r['preset']} | {r['variant']} | {per_outer} | {human(r['bytes_per_step'])} | "
               f"{s / r['bytes_per_step']:.0f}x less |"
               f" {'-' if local is None else human(local)} |" if r["variant"] != "std" else
               f"| {r['preset']} | std | - | {human(r['bytes_per_step'])} | 1x | (all-reduce) |")
  mc = {r["variant"]: r for r in rows if r["preset"] == "mc4_1b_spec_opt"}
  if "std" in mc and "spec_opt" in mc:
    a, b = mc["std"], mc["spec_opt"]
    p_std = a["body_params"] + a["embed_params_per_source"]
    p_dept = b["body_params"] / b["local_steps"]
    out += ["", "**Paper check, 1.3B SPEC-OPT (mC4, 8 sources, N=500).** Parameters per step: "
            f"STD all-reduces body + mT5 table = {p_std / 1e9:.3f}B every step; SPEC-OPT sends the "
            f"body ({b['body_params'] / 1e9:.3f}B) once per 500 steps = {p_dept / 1e6:.2f}M per "
            f"step: **{p_std / p_dept:.0f}x less** (paper: 1.71B vs 2.4M, ~714x). In compiled HLO "
            f"bytes: {human(a['bytes_per_step'])} vs {human(b['bytes_per_step'])} per step = "
            f"**{a['bytes_per_step'] / b['bytes_per_step']:.0f}x less**; the HLO ratio is larger "
            "because XLA all-reduces the tied table's two gradient contributions (LM head and "
            "token gather) separately."]
  return out


def memory_section(d):
  rows = d["rows"]
  out = ["## 3. Memory (bench/comm_memory.py, same run)", "",
         "Embedding parameters per source (tied table; `trim` keeps all rows here because the "
         "abstract presets have no data to trim by; the paper's TRIM saves 2-78% on The Pile).", "",
         "| preset | body params | std / glob | trim | spec | spec_opt | spec_opt vs std |",
         "|---|---|---|---|---|---|---|"]
  by = {}
  for r in rows:
    by.setdefault(r["preset"], {})[r["variant"]] = r
  for p, v in by.items():
    e = {k: v[k]["embed_params_per_source"] for k in v}
    m = lambda n: f"{n / 1e6:.4g}M"
    out.append(f"| {p} | {m(v['std']['body_params'])} | {m(e['std'])} | "
               f"{m(e['trim'])} | {m(e['spec'])} | {m(e['spec_opt'])} | "
               f"{e['std'] / e['spec_opt']:.2f}x less |")
  out += ["", "Paper, 1.3B mC4: 512.2M (mT5 vocabulary, 250,112 x 2048) vs 102.9M (50,257 x 2048) "
          "per source, ~5x.", "",
          "Compiled local step, memory analysis per device (XLA CPU backend, one device per "
          "source: each device holds a whole source's model, optimizer state and batch; on a "
          "pod a source spreads over its slice's data/fsdp axes, so run `--mode=compile` on the "
          "target devices for the real figure):", "",
          "| preset | variant | arguments (params + AdamW + batch) | temporaries | outputs (aliased) |",
          "|---|---|---|---|---|"]
  for r in rows:
    m = r.get("local_memory")
    if m:
      out.append(f"| {r['preset']} | {r['variant']} | {human(m['argument_size_in_bytes'])} | "
                 f"{human(m['temp_size_in_bytes'])} | {human(m['output_size_in_bytes'])} "
                 f"({human(m['alias_size_in_bytes'])}) |")
  return out


def profile_section(d):
  out = ["### Where the step's time goes (bench/profile_step.py)", "", f"    {d['command']}", "",
         f"{d['date']}, jax {d['jax']}, load {d['load_avg_1min']:.1f}. Op time per step by kind, "
         "summed over XLA:CPU's pool threads (thunks overlap, so the sum can exceed the wall "
         "time); `matmul at peak` is the step's matmul FLOPs at the 2048^3 peak measured in "
         "the same run.", "",
         "| model | setting | wall (ms) | matmul at peak | matmul | scan bookkeeping | "
         "layout copies | elementwise and reductions | all ops |", "|---|---|---|---|---|---|---|---|---|"]
  for r in d["rows"]:
    k = r["op_ms_by_kind"]
    out.append(f"| {r['model']} | {r['setting']} | {r['wall_ms']:.1f} | "
               f"{r['matmul_at_peak_ms']:.1f} | {k.get('matmul', 0):.1f} | "
               f"{k.get('scan bookkeeping', 0):.1f} | {k.get('layout copies', 0):.1f} | "
               f"{k.get('elementwise and reductions', 0):.1f} | {r['op_ms_total']:.1f} |")
  return out


def scaling_section(d):
  out = ["## 4. Scaling (bench/scaling.py)", "", f"    {d['command']}", "",
         f"{d['date']}, model {d['model']}, {d['devices']} fake CPU devices on {d['cpus']} cores "
         f"(load {d['load_avg_1min']:.1f}); all programs interleaved in one process.", "",
         "Sources on a fixed 8-device mesh (batch per source fixed, so work grows with K):", "",
         "| sources | mesh (source x data) | step (ms) | per source (ms) | tokens/s | step / 1-source step |",
         "|---|---|---|---|---|---|"]
  for r in d["by_sources"]:
    out.append(f"| {r['sources']} | {r['mesh']['source']} x {r['mesh']['data']} | "
               f"{r['step_s'] * 1e3:.1f} | {r['step_s_per_source'] * 1e3:.1f} | "
               f"{r['tokens_per_s']:,.0f} | {r['step_vs_1_source']:.2f} |")
  out += ["", f"local_steps N (8 sources, one device each): local step {d['local_s'] * 1e3:.1f} ms, begin_round + "
          f"outer step {d['begin_outer_s'] * 1e3:.1f} ms; cost of one training step = local + "
          "(begin + outer) / N:", "",
          "| N | modelled step (ms) | measured (whole rounds, ms) | outer share |", "|---|---|---|---|"]
  for r in d["by_local_steps"]:
    meas = f"{r['measured_step_s'] * 1e3:.1f}" if "measured_step_s" in r else "-"
    out.append(f"| {r['local_steps']} | {r['model_step_s'] * 1e3:.1f} | {meas} | "
               f"{100 * r['outer_share']:.1f}% |")
  return out


def core_speed_section(d):
  st, tr = d["steps"], d["trainer"]
  K = st["sources"]
  med, best = st["median"], st["best"]
  out = ["## Steps and trainer, side by side (bench/core_speed.py)", "", f"    {d['command']}", "",
         f"{d['date']}, jax {d['jax']}, {d['cpus']}-core x86_64 CPU shared with other jobs (load "
         f"{st['load_avg_1min'][0]:.1f}-{st['load_avg_1min'][1]:.1f} while the steps ran, "
         f"{tr['load_avg_1min']:.1f} after the trainer); no GPU. {st['repeats']} interleaved "
         f"blocks of {st['steps_per_block']} steps per candidate; `median` is the median block, "
         "`best` the fastest (the least disturbed by the other jobs). MFU against the f32 "
         f"2048^3 matmul timed as one more candidate ({med['peak_gflops']:.0f} GFLOP/s median, "
         f"{best['peak_gflops']:.0f} best). Model {st['model']}: d_model {st['d_model']}, "
         f"{st['n_layers']} layers, vocab {st['vocab_rows']}, batch {st['batch']} x "
         f"{st['seq_len']} per source.", "",
         "| candidate | step (ms), median / best | tokens/s, median / best | MFU, median / best |",
         "|---|---|---|---|"]
  for k in med["step_s"]:
    out.append(f"| {k} | {med['step_s'][k] * 1e3:.1f} / {best['step_s'][k] * 1e3:.1f} | "
               f"{med['tokens_per_s'][k]:,.0f} / {best['tokens_per_s'][k]:,.0f} | "
               f"{100 * med['mfu'][k]:.1f}% / {100 * best['mfu'][k]:.1f}% |")
  both = lambda key: f"{med[key]:.3f} / {best[key]:.3f}"
  out += ["", "| ratio, same run | median / best | target |", "|---|---|---|",
          f"| MFU: DEPT step, {K} sources on one device / plain step | "
          f"{both(f'mfu_dept_{K}src_vs_plain')} | >= 0.95 |",
          f"| MFU: DEPT step, {K} sources / the plain step on {K} separate models in turn | "
          f"{both(f'mfu_dept_{K}src_vs_plain_{K}_models')} | |",
          f"| MFU: DEPT step, 1 source / plain step | {both('mfu_dept_1src_vs_plain')} | |",
          f"| tokens/s: plain JAX / torch eager | {both('jax_plain_vs_torch')} | >= 1.0 |",
          f"| tokens/s: DEPT {K} sources / torch eager | {both(f'dept_{K}src_vs_torch')} | |",
          "", f"Trainer on configs/demo.py ({tr['train_steps']} steps, {tr['sources']} sources, an "
          f"outer step, eval and checkpoint every {tr['local_steps']} steps) with a block of the "
          "bench step above (same shapes, same process) at every log, so each 10-step trainer "
          "interval sits between two bench blocks:", "",
          "| measure | tokens/s | / bench step |", "|---|---|---|",
          f"| bench step (median block) | {tr['bench_step_tokens_per_s']:,.0f} | 1 |",
          f"| trainer, logged tokens_per_sec (intervals without an outer step; ratio: median over "
          f"intervals of interval / the blocks around it) | {tr['trainer_tokens_per_s']:,.0f} | "
          f"{tr['trainer_vs_bench_step']:.3f} (target >= 0.95) |",
          f"| trainer end to end, steps {tr['end_to_end_steps'][0]}-"
          f"{tr['end_to_end_steps'][1]} (outer steps, evals, checkpoints included) | "
          f"{tr['trainer_end_to_end_tokens_per_s']:,.0f} | {tr['end_to_end_vs_bench_step']:.3f} |"]
  return out


def bank_section(d):
  out = ["## Bytes across `source` per round with banks (bench/bank_traffic.py)", "",
         f"    {d['command']}", "",
         f"{d['date']}. Fewer sources per round than sources, one fake CPU device per slot; bytes "
         "of the collectives spanning `source` slices in the compiled begin_round and outer_step "
         "(AOT), against the body's bytes and the payload the trainer logs. `this checkout`: each "
         "slice keeps its own sources' banks and trains only those; the other rows are the code "
         "before (d095785), whose bank gathers and scatters crossed slices.", "",
         "| code | config | variant | sources / per round | body | begin_round | outer_step | "
         "logged payload |", "|---|---|---|---|---|---|---|---|"]
  for r in d["rows"]:
    out.append(f"| {r['code']} | {r['config']} | {r['variant']} | {r['sources']} / "
               f"{r['sources_per_round']} | {human(r['body_bytes'])} | "
               f"{human(r['begin_round_bytes'])} | {human(r['outer_step_bytes'])} | "
               f"{human(r['payload_bytes_logged'])} |")
  return out


def compare_section(d):
  rows = d["rows"]
  commands = d.get("commands", [d["command"]])
  out = ["## Losses against the code before the refactor (bench/compare_main.py)", "",
         *[f"    {c}" for c in commands], "",
         f"{d['date']}. The reference is {d.get('base_name') or d['base']} (`git archive "
         f"{d.get('base_name') or 'REV'} | tar -x -C {d['base']}`). "
         "Both start from the reference's initial parameters and train the same data with the "
         f"real trainer for {rows[0]['steps']} steps on one CPU device; every per-source "
         "training loss of every step is compared. `patched` is the reference with only the two "
         "numerical changes the issue asks for (no vmap of one around the slot loop; FedAvg "
         "assigns sum(w x) / sum(w)), made by `patch_reference` in the script.", "",
         "| config | variant | this vs reference: max abs diff | first step not bit-equal | "
         "reference vs patched | patched vs this | first step not bit-equal |",
         "|---|---|---|---|---|---|---|"]
  first = lambda x: "none" if x is None else str(x)
  for r in rows:
    bp, pm = r.get("base_vs_patched"), r.get("patched_vs_mine")
    patched = (["", "", ""] if pm is None else
               [f"{bp['max_abs_diff']:.2e}", f"{pm['max_abs_diff']:.2e}",
                first(pm["first_step_differing"])])
    out.append(f"| {r['config']} | {r['variant']} | {r['max_abs_diff']:.2e} | "
               f"{first(r['first_step_differing'])} | " + " | ".join(patched) + " |")
  return out


def write_block(text, begin, end, block):
  if begin in text and end in text:
    head, rest = text.split(begin, 1)
    return head + block + rest.split(end, 1)[1]
  return text.rstrip() + "\n\n" + block + "\n"


def main():
  parts = [BEGIN, ""]
  summary = os.path.join(ROOT, "bench", "results", "summary.md")
  if os.path.exists(summary):
    with open(summary) as f:
      parts += [f.read().rstrip(), ""]
  import glob
  paths = sorted(glob.glob(os.path.join(ROOT, "bench", "results", "step_speed*.json")))
  for i, path in enumerate(paths):
    with open(path) as f:
      parts += speed_section(json.load(f), first=i == 0) + [""]
  for name, fn in (("dept_vs_plain", dept_vs_plain_section), ("profile_step", profile_section),
                   ("comm_memory", comm_section),
                   ("comm_memory", memory_section), ("scaling", scaling_section)):
    d = load(name)
    if d is not None:
      parts += fn(d) + [""]
  notes = os.path.join(ROOT, "bench", "results", "notes.md")
  if os.path.exists(notes):
    with open(notes) as f:
      parts += [f.read().rstrip(), ""]
  parts.append(END)
  text = open(RESULTS).read() if os.path.exists(RESULTS) else "# Benchmark results\n"
  text = write_block(text, BEGIN, END, "\n".join(parts))
  core = [CORE_BEGIN, ""]
  notes = os.path.join(ROOT, "bench", "results", "core_notes.md")
  if os.path.exists(notes):
    with open(notes) as f:
      core += [f.read().rstrip(), ""]
  for name, fn in (("core_speed", core_speed_section), ("bank_traffic", bank_section),
                   ("compare_main", compare_section)):
    d = load(name)
    if d is not None:
      core += fn(d) + [""]
  core.append(CORE_END)
  text = write_block(text, CORE_BEGIN, CORE_END, "\n".join(core))
  with open(RESULTS, "w") as f:
    f.write(text)


if __name__ == "__main__":
  main()
