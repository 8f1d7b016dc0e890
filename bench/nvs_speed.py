"""Novel-view rendering speed: Efficient-LVSM vs LVSM (decoder-only) vs the peer lvsm-pytorch, and the KV cache.

Why Efficient-LVSM is faster: LVSM renders each target by full self-attention over [all input tokens, the target's
tokens], so the input tokens are recomputed for every target and attention grows with ((Vin + 1) N)^2. Efficient-
LVSM runs the input views once, each view attending only within itself (linear in Vin), and every target attends
within itself and cross-attends to the inputs' cached keys / values (linear in Vin per target). Batching targets
amortises the input stream; targets never attend to each other, so a batch gives the same pixels as one at a time.

Three tables, measured in one run on one device (ratios are what to read on a shared machine):

1. time per rendered view at equal width and depth (LVSM: 2L decoder blocks; Efficient-LVSM: L input-stream +
   L target-stream blocks; lvsm-pytorch: 2L blocks of its x-transformers decoder), the same posed 256 x 256 inputs,
   for 2, 4, 8, 16 inputs, TARGETS targets per call (default 8: a chunk of a camera path, as in Efficient-LVSM's own
   incremental benchmark; a video or an orbit renders many targets from one set of inputs);
2. adding one input view to N: through the KV cache (encode the new view only) vs re-encoding all N + 1 views,
   alone and followed by rendering TARGETS targets; and LVSM re-rendering the TARGETS targets from N + 1 views
   (the comparison of Efficient-LVSM's paper);
3. parameters of each model.

lvsm-pytorch (PyPI) imports torchvision only for its perceptual loss, which rendering never calls; torchvision is not
installable here, so this process (and only this process) registers an empty stand-in module under that name
before importing it, and says so.

    python bench/nvs_speed.py              # published width and depth (d 768, 24 blocks), 256 x 256: a GPU run
    python bench/nvs_speed.py --quick      # a CPU-sized check: d 256, 6 blocks, 64 x 64, fewer cache sizes
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import types
from pathlib import Path

import torch

from manyview.io.atomic import atomic_open
from manyview.models.efficient_lvsm import EfficientLVSM
from manyview.models.lvsm import LVSMDecoderOnly
from manyview.models.lvsm_base import ray_conditioning
from manyview.models.lvsm_config import LVSMConfig


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


BUDGET_S = float("inf")  # --budget-s: stop repeating a measurement once its timed runs add up to this


def timed(fn, device: torch.device, repeats: int, warmup: int = 1, setup=None) -> float:
    """Median wall seconds of ``fn()`` over ``repeats`` runs after ``warmup`` runs; ``setup()`` runs untimed first.

    Under a budget (``BUDGET_S``), repeats stop once the timed runs add up to it, and a warm-up run that alone takes
    longer than the budget is kept as the measurement: at tens of seconds per run, first-call effects are noise.
    """
    times = []
    for i in range(warmup + repeats):
        if setup is not None:
            setup()
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        elapsed = time.perf_counter() - t
        if i >= warmup or elapsed > BUDGET_S:
            times.append(elapsed)
        if times and sum(times) > BUDGET_S:
            break
    return statistics.median(times)


def scene(n_in: int, n_tgt: int, size: int, device: torch.device, seed: int = 0):
    """Posed inputs and targets on a forward-moving path (poses in the normalised range the models expect)."""
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(1, n_in, 3, size, size, generator=g)
    f = torch.tensor([0.9 * size, 0.9 * size, size / 2, size / 2])

    def poses(n, offset):
        c2w = torch.eye(4).repeat(1, n, 1, 1)
        c2w[0, :, 0, 3] = torch.linspace(-0.5, 0.5, n) + offset
        c2w[0, :, 2, 3] = torch.linspace(-0.2, 0.2, n)
        return c2w

    return (images.to(device), f.expand(1, n_in, 4).to(device), poses(n_in, 0.0).to(device),
            f.expand(1, n_tgt, 4).to(device), poses(n_tgt, 0.05).to(device))


def load_peer():
    """lvsm-pytorch's LVSM class, importable without torchvision (a stand-in module, this process only)."""
    if "torchvision" not in sys.modules:
        try:
            import torchvision  # noqa: F401
        except ImportError:
            sys.modules["torchvision"] = types.ModuleType("torchvision")
            print("note: registered an empty stand-in 'torchvision' module in this benchmark process only "
                  "(lvsm-pytorch imports it for its perceptual loss, which rendering never calls)")
    from lvsm_pytorch import LVSM as PeerLVSM

    return PeerLVSM


def params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CPU-sized: d 256, 6 blocks, 64 x 64, N up to 64")
    parser.add_argument("--d", type=int, default=None, help="width (default 768; quick 256)")
    parser.add_argument("--d-head", type=int, default=64)
    parser.add_argument("--blocks", type=int, default=None,
                        help="transformer blocks in all (LVSM: all decoder; Efficient-LVSM: half per stream); "
                             "default 24, quick 6")
    parser.add_argument("--size", type=int, default=None, help="square image size (default 256; quick 64)")
    parser.add_argument("--inputs", type=int, nargs="+", default=[2, 4, 8, 16])
    parser.add_argument("--targets", type=int, default=8, help="targets rendered per call")
    parser.add_argument("--cache-n", type=int, nargs="+", default=[4, 16, 64])
    parser.add_argument("--lvsm-max-views", type=int, default=None,
                        help="skip LVSM / peer runs with more input views than this (default: none skipped)")
    parser.add_argument("--peer-max-views", type=int, default=None,
                        help="skip lvsm-pytorch runs with more input views than this (default: as --lvsm-max-views)")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per measurement (default 5; quick 3)")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="stop repeating a measurement once its runs add up to this many seconds (CPU runs of "
                             "LVSM with 16 inputs at 256 x 256 take minutes each)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", choices=["auto", "float32", "bfloat16"], default="auto",
                        help="autocast dtype (auto: bfloat16 on CUDA, float32 on CPU)")
    parser.add_argument("--no-peer", action="store_true", help="skip lvsm-pytorch")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (quick default 1: steadier timings on a shared machine)")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--no-readme", action="store_true", help="do not write the tables into bench/README.md")
    args = parser.parse_args()

    quick = args.quick
    global BUDGET_S
    BUDGET_S = args.budget_s if args.budget_s is not None else float("inf")
    d = args.d or (256 if quick else 768)
    blocks = args.blocks or (6 if quick else 24)
    size = args.size or (64 if quick else 256)
    repeats = args.repeats or (3 if quick else 5)
    lvsm_max = args.lvsm_max_views or 10**9
    peer_max = args.peer_max_views or lvsm_max
    if blocks % 2:
        parser.error("--blocks must be even (Efficient-LVSM splits them over two streams)")
    threads = args.threads or (1 if quick else None)
    if threads:
        torch.set_num_threads(threads)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    dtype = {"auto": torch.bfloat16 if device.type == "cuda" else torch.float32, "float32": torch.float32,
             "bfloat16": torch.bfloat16}[args.dtype]
    out_path = args.out or Path(__file__).parent / "results" / ("nvs_speed_quick.json" if quick else "nvs_speed.json")
    T = args.targets

    torch.manual_seed(0)
    lvsm = LVSMDecoderOnly(LVSMConfig("decoder_only", d=d, d_head=args.d_head, n_layer=blocks, image_size=size))
    eff = EfficientLVSM(LVSMConfig("efficient", d=d, d_head=args.d_head, n_layer=blocks // 2, image_size=size))
    lvsm, eff = lvsm.to(device).eval(), eff.to(device).eval()
    peer = None
    if not args.no_peer:
        Peer = load_peer()
        # its own defaults plus x-transformers' attn_flash: attention through SDPA, as ours, instead of a
        # materialised (tokens x tokens) matrix that needs more than 24 GB at 4 inputs of 256 x 256
        import inspect

        decoder_kwargs = {**inspect.signature(Peer).parameters["decoder_kwargs"].default, "attn_flash": True}
        peer = Peer(dim=d, max_image_size=size, patch_size=8, depth=blocks, heads=d // args.d_head,
                    dim_head=args.d_head, max_input_images=max(args.inputs) + 1,  # + the target slot
                    decoder_kwargs=decoder_kwargs).to(device).eval()

    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
    info = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
            "torch": torch.__version__, "threads": torch.get_num_threads(), "dtype": str(dtype).replace("torch.", ""),
            "loadavg_start": os.getloadavg()[0], "mode": "quick" if quick else "full", "d": d, "d_head": args.d_head,
            "blocks": blocks, "size": size, "targets_per_call": T, "repeats": repeats,
            "budget_s": args.budget_s,
            "params": {"lvsm": params(lvsm), "efficient_lvsm": params(eff)}}
    if peer is not None:
        info["params"]["lvsm_pytorch"] = params(peer)
        info["peer_decoder_kwargs"] = decoder_kwargs
    print(f"device {info['device']}, {info['dtype']}, width {d}, {blocks} blocks, {size}x{size}, {T} targets per call, "
          f"median of {repeats}")

    # ---------------------------------------------------------------- 1. time per rendered view
    render_rows = []
    with torch.inference_mode(), autocast:
        for n in args.inputs:
            images, fi, ci, ft, ct = scene(n, T, size, device)
            row = {"inputs": n}
            row["efficient_ms"] = 1000 * timed(lambda: eff(images, fi, ci, ft, ct), device, repeats) / T
            if n + 1 <= lvsm_max:
                row["lvsm_ms"] = 1000 * timed(lambda: lvsm(images, fi, ci, ft, ct), device, repeats) / T
                row["speedup_vs_lvsm"] = row["lvsm_ms"] / row["efficient_ms"]
                if peer is not None and n + 1 <= peer_max:
                    in_rays = ray_conditioning(fi, ci, size, size)  # (1, n, 6, S, S)
                    tgt_rays = ray_conditioning(ft, ct, size, size)[0]  # (T, 6, S, S): one target per batch item
                    imgs_b, rays_b = images.expand(T, -1, -1, -1, -1), in_rays.expand(T, -1, -1, -1, -1)
                    row["lvsm_pytorch_ms"] = 1000 * timed(
                        lambda: peer(input_images=imgs_b, input_rays=rays_b, target_rays=tgt_rays), device,
                        repeats) / T
                    row["speedup_vs_lvsm_pytorch"] = row["lvsm_pytorch_ms"] / row["efficient_ms"]
            render_rows.append(row)
            print(f"  inputs {n:3d}: " + ", ".join(f"{k} {v:.4g}" for k, v in row.items() if k != "inputs"))

    # ---------------------------------------------------------------- 2. one more input view
    cache_rows = []
    with torch.inference_mode(), autocast:
        for n in args.cache_n:
            images, fi, ci, ft, ct = scene(n + 1, T, size, device, seed=1)
            holder = {"cache": eff.encode_tensors(images[:, :n], fi[:, :n], ci[:, :n]).reserve(n + 1)}

            def reset():  # untimed: back to N cached views, with room for one more (no reallocation in the add)
                if holder["cache"].n_views > n:
                    holder["cache"] = holder["cache"].remove(n).reserve(n + 1)

            def add_one():
                holder["cache"].add_tensors(images[:, n:], fi[:, n:], ci[:, n:])

            def add_and_render():
                add_one()
                eff.render_cache(holder["cache"], ft, ct, (size, size))

            row = {"n": n}
            row["cache_add_ms"] = 1000 * timed(add_one, device, repeats, setup=reset)
            row["reencode_ms"] = 1000 * timed(lambda: eff.encode_tensors(images, fi, ci), device, repeats)
            row["speedup_add"] = row["reencode_ms"] / row["cache_add_ms"]
            row["cache_add_render_ms"] = 1000 * timed(add_and_render, device, repeats, setup=reset)
            row["reencode_render_ms"] = 1000 * timed(lambda: eff(images, fi, ci, ft, ct), device, repeats)
            row["speedup_add_render"] = row["reencode_render_ms"] / row["cache_add_render_ms"]
            if n + 2 <= lvsm_max:
                row["lvsm_render_ms"] = 1000 * timed(lambda: lvsm(images, fi, ci, ft, ct), device, repeats)
                row["speedup_vs_lvsm"] = row["lvsm_render_ms"] / row["cache_add_render_ms"]
            cache_rows.append(row)
            print(f"  N {n:3d}: " + ", ".join(f"{k} {v:.4g}" for k, v in row.items() if k != "n"))

    info["loadavg_end"] = os.getloadavg()[0]
    result = {"info": info, "render": render_rows, "cache": cache_rows}
    md = markdown(result)
    print("\n" + md)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(out_path, "w", encoding="utf-8") as fh:
        json.dump(result, fh, indent=1)
        fh.write("\n")
    with atomic_open(out_path.with_suffix(".md"), "w", encoding="utf-8") as fh:
        fh.write(md + "\n")
    print(f"\nwrote {out_path} and {out_path.with_suffix('.md')}")
    if not args.no_readme:
        from readme_table import write_table

        name = "nvs_speed_quick" if quick else "nvs_speed"
        print(f"updated {write_table(name, md, heading=f'Novel view synthesis speed (`bench/nvs_speed.py`, {name})')}")


def markdown(result: dict) -> str:
    info = result["info"]

    def f(row, key, unit=""):
        return f"{row[key]:.3g}{unit}" if key in row else "not run"

    lines = [f"Device {info['device']} ({info['dtype']}, {info['threads']} threads, load {info['loadavg_start']:.1f}); "
             f"width {info['d']}, {info['blocks']} blocks in all, {info['size']}x{info['size']} images, "
             f"{info['targets_per_call']} targets per call; median of up to {info['repeats']} runs"
             + (f" (at most {info['budget_s']:g} s of runs per measurement)" if info.get("budget_s") else "")
             + "; parameters: "
             + ", ".join(f"{k} {v / 1e6:.1f} M" for k, v in info["params"].items()),
             "", "Time per rendered view (ms):", "",
             "| inputs | Efficient-LVSM | LVSM | speed-up | lvsm-pytorch | speed-up |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in result["render"]:
        lines.append(f"| {r['inputs']} | {f(r, 'efficient_ms')} | {f(r, 'lvsm_ms')} | {f(r, 'speedup_vs_lvsm', 'x')} | "
                     f"{f(r, 'lvsm_pytorch_ms')} | {f(r, 'speedup_vs_lvsm_pytorch', 'x')} |")
    lines += ["", f"Adding one input view to N (ms; 'render' = then rendering {info['targets_per_call']} targets):", "",
              "| N | KV-cache add | re-encode N+1 | speed-up | cache add + render | re-encode + render | speed-up | "
              "LVSM render from N+1 | speed-up vs LVSM |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in result["cache"]:
        lines.append(f"| {r['n']} | {f(r, 'cache_add_ms')} | {f(r, 'reencode_ms')} | {f(r, 'speedup_add', 'x')} | "
                     f"{f(r, 'cache_add_render_ms')} | {f(r, 'reencode_render_ms')} | "
                     f"{f(r, 'speedup_add_render', 'x')} | "
                     f"{f(r, 'lvsm_render_ms')} | {f(r, 'speedup_vs_lvsm', 'x')} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
