"""Compile every Triton kernel launch the ops make, for real GPU targets, on a machine without a GPU,
exactly as a real launch would be compiled, and check the machine code.

The interpreter (TRITON_INTERPRET=1) runs the kernels in NumPy and accepts code that the Triton
compiler rejects, so this records the launches of each op (kernel, arguments, constexprs) with
wrap_triton swapped for a recorder, and compiles each distinct one for sm_80 and sm_90 through the
kernel's own JIT binder (`create_function_from_signature` + `JITFunction._pack_args`, the code
`JITFunction.run` uses; present in triton 3.6 and 3.8): the same signature, constexprs and
specialisation attributes (`tt.divisibility` 16 for 16-byte aligned pointers and ints divisible by
16, ints equal to 1 as constexprs) as a launch with these arguments on a GPU.

Checks on the sm_90 code (each prints `FAIL <check> ...`):
- compile: every launch compiles for sm_80 and sm_90;
- f64: float64 kernels compute in float64: no float32 parameter, no float64 -> float32 conversion,
  and outside the sampling kernels (whose eps is float32 by the RNG contract, then widened) no
  float32 arithmetic or conversion at all, except the float32 compares/abs that libdevice's float64
  exp applies to the high word of its argument (its range check);
- vector: float32 launches whose row length is divisible by 16 load their inputs with 16-byte
  vector loads (PTX ld.global.v4, SASS LDG.E.128);
- loop: no fence, membar, CCTL or atomic inside a loop (SASS), so a tile costs no GPU-wide fence;
- local: no local memory (PTX ld/st.local, SASS LDL/STL);
- rng: the Box-Muller of the RNG contract (math.box_muller) compiles to exactly the float32
  instructions it spells out (no contraction, no slow path, no call);
- respecialise: launches that differ only in `scale` share one compiled kernel;
- index64: a row of 2^31 elements or more (C passed as int64) gets 64-bit column offsets: no
  32-bit `cb * BLOCK_C` left in the PTX (it wrapped before; the interpreter computes in int64);
- inductor: under torch.compile, inductor compiles a copy of each kernel's source that holds the JIT
  helpers it names by bare name (user_defined_triton_kernel_transitive_closure_source_code): that
  copy compiles too (a helper reached as `module.helper` was undefined there: NameError on a GPU).
Run without TRITON_INTERPRET; exit status 1 if any check fails. `--dump DIR` writes the PTX/SASS.
"""
import collections
import multiprocessing
import os
import re
import struct
import subprocess
import sys
import tempfile

assert os.environ.get("TRITON_INTERPRET", "0") != "1", "run without TRITON_INTERPRET"

import torch  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource, make_backend  # noqa: E402
from triton.runtime.jit import create_function_from_signature  # noqa: E402

from vae_fast._ops import philox_state  # noqa: E402
from vae_fast._schemas import NONE, ROWS, SUM  # noqa: E402
from vae_fast.triton import math as vm  # noqa: E402
from vae_fast.triton import ops  # noqa: E402

ARCHS = (80, 90)
BIN = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
launches = []  # (kernel, args, kwargs), one per call the ops made


class Recorder:
    def __init__(self, kernel):
        self.kernel = kernel

    def __getitem__(self, grid):
        def record(*args, **kwargs):
            launches.append((self.kernel, args, kwargs))
        return record


def exercise():
    """Call every op (forward and backward) over dtypes, reductions and tile shapes."""
    t = torch.ops.vae_fast_triton
    # fp16 takes bf16's code path; the shapes give 2-D tiles with per-element eps (128x20), 4-aligned
    # 1-D tiles split over several programs (8x65536), and the ints equal to 1 that Triton
    # specialises ((1,))
    for dtype in (torch.float32, torch.bfloat16, torch.float64):
        for shape in ((128, 20), (8, 65536), (1,)):
            a, b, c = (torch.rand(shape, dtype=dtype) for _ in range(3))
            p = philox_state(torch.device("cpu"))
            for S in (1, 3):
                t.reparameterize(a, b, p, S)
                t.reparameterize_backward(torch.rand((S, *shape), dtype=dtype), b, p, S)
                t.sample_and_kl(a, b, p, S)
                t.sample_and_kl_backward(torch.rand((S, *shape), dtype=dtype), torch.rand(shape[0], dtype=dtype),
                                         a, b, p, S)
            # the logvar clamp (DiagonalGaussian: diffusers' [-30, 20]; a one-sided bound is the same code)
            t.sample_and_kl(a, b, p, 1, -30.0, 20.0)
            t.sample_and_kl_backward(torch.rand((1, *shape), dtype=dtype), torch.rand(shape[0], dtype=dtype),
                                     a, b, p, 1, -30.0, 20.0)
            t.reparameterize(a, b, p, 1, None, 20.0)
            t.gaussian_kl(a, b, None, None, ROWS, 1.0, None, -30.0, 20.0)
            t.gaussian_kl_backward(a.reshape(-1)[:shape[0]], a, b, None, None, ROWS, 1.0, -30.0, 20.0)
            for red, grad in ((NONE, a), (SUM, torch.tensor(1.0, dtype=dtype)), (ROWS, a.reshape(-1)[:shape[0]])):
                for scale in (0.5, 1 / 3):  # the bits of 1/3 are not divisible by 16: no new variant
                    t.bernoulli_nll(a, b, red, scale)
                    t.bernoulli_nll_backward(grad, a, b, red, scale, True)
                    t.bernoulli_nll_backward(grad, a, b, red, scale, False)
                    t.gaussian_kl(a, b, None, None, red, scale)
                    t.gaussian_kl(a, b, c, c, red, scale)
                    t.gaussian_kl_backward(grad, a, b, None, None, red, scale)
                    t.gaussian_kl_backward(grad, a, b, c, None, red, scale)
                    t.gaussian_kl_backward(grad, a, b, c, c, red, scale)
                    t.gaussian_nll(a, b, c, red, scale)
                    t.gaussian_nll_backward(grad, a, b, c, red, scale)
                for w, pw in ((c, None), (None, c), (c, c)):  # weighted BCE (weights of logits' shape)
                    t.bernoulli_nll(a, b, red, 0.5, w, pw)
                    t.bernoulli_nll_backward(grad, a, b, red, 0.5, True, w, pw)
                    t.bernoulli_nll_backward(grad, a, b, red, 0.5, False, w, pw)
                if dtype == torch.bfloat16:  # autocast: float32 outputs of 16-bit inputs
                    t.bernoulli_nll(a, b, red, 0.5, out_dtype=torch.float32)
                    t.gaussian_nll(a, b, c, red, 0.5, out_dtype=torch.float32)
                    t.gaussian_kl(a, b, None, None, red, 0.5, out_dtype=torch.float32)
    # log_density(_backward) (vae_fast/triton/iwae.py): z (K*B, C) over mu, logvar (B, C)
    for dtype in (torch.float32, torch.bfloat16, torch.float64):
        for K, B, C in ((50, 128, 20), (3, 8, 4096)):
            z, mu, lv = torch.rand(K * B, C, dtype=dtype), torch.rand(B, C, dtype=dtype), torch.rand(B, C, dtype=dtype)
            for red, grad in ((NONE, z), (SUM, torch.tensor(1.0, dtype=dtype)), (ROWS, z[:, 0].contiguous())):
                t.log_density(z, mu, lv, 1.0, -1.0, red, 0.5)
                t.log_density(z, None, None, 1.0, 0.0, red, 0.5)
                t.log_density_backward(grad, z, mu, lv, 1.0, -1.0, red, 0.5, True)
                t.log_density_backward(grad, z, None, None, 1.0, 0.0, red, 0.5, False)


def specialise(kernel, args, kwargs, backend):
    """(signature, constexprs, attrs, options) exactly as JITFunction.run derives them."""
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    bound, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = kernel._pack_args(backend, kwargs, bound, specialization, options)
    return signature, constexprs, attrs, options


_jobs = []  # (arch, target, kernel, args, signature, constexprs, attrs, options): read by forked workers


def _compile(i: int):
    """(ptx, sass, None) of job i (sass for sm_90 only), or (None, None, error text)."""
    arch, target, kernel, _, signature, constexprs, attrs, options = _jobs[i]
    try:
        ck = triton.compile(ASTSource(kernel, signature, constexprs, attrs), target=target,
                            options=options.__dict__)
    except Exception as exc:
        return None, None, str(exc)[-800:]
    return ck.asm["ptx"], sass_of(ck.asm["cubin"]) if arch == 90 else "", None


def sass_of(cubin: bytes) -> str:
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        return subprocess.run([os.path.join(BIN, "cuobjdump"), "-sass", f.name], capture_output=True,
                              text=True, check=True).stdout


# ---------------------------------------------------------------- checks on one compiled launch

F32_INSTR = re.compile(r"^\s*(?:@%p\d+\s+)?([a-z0-9.:_]*\.f32[a-z0-9.]*)\s", re.M)
LIBDEVICE_EXP_F32 = re.compile(r"^(abs(\.ftz)?|setp\.[a-z]+(\.ftz)?)\.f32$")  # exp(double)'s range check


def check_f64(name, ptx):
    bad = []
    if re.search(r"\.param \.f32", ptx):
        bad.append("a float32 parameter")
    if re.search(r"cvt(\.[a-z]+)*\.f32\.f64", ptx):
        bad.append("a float64 -> float32 conversion")
    if not name.startswith("sample"):
        f32 = sorted({op for op in F32_INSTR.findall(ptx) if not LIBDEVICE_EXP_F32.match(op)})
        if f32:
            bad.append(f"float32 instructions {f32}")
    return bad


def check_vector(ptx, sass, n_inputs, per_thread):
    """Every input tensor is read with 16-byte loads: per_thread / 4 of them per input."""
    need = n_inputs * max(1, per_thread // 4)
    v4 = len(re.findall(r"ld\.global(\.[a-z0-9:_]+)*\.v4\.(b32|f32)", ptx))
    ldg128 = len(re.findall(r"LDG\.E\.128", sass))
    if v4 < need or ldg128 < need:
        return [f"{v4} ld.global.v4 / {ldg128} LDG.E.128, {need} needed ({n_inputs} inputs)"]
    return []


# the kernels of the vector check (log_density_fwd/bwd of vae_fast/triton/iwae.py are not tiled like these)
VECTOR_CHECKED = ("kl_fwd", "kl_bwd", "bce_fwd", "bce_bwd", "gnll_fwd", "gnll_bwd", "sample_fwd", "sample_bwd")


def elementwise_inputs(name, consts):
    """How many tensors a launch reads element by element (a reduced gradient is read per row)."""
    grad = 0 if consts.get("REDUCE") else 1
    priors = int(bool(consts.get("HAS_PMU"))) + int(bool(consts.get("HAS_PLV")))
    weights = int(bool(consts.get("HAS_W"))) + int(bool(consts.get("HAS_PW")))
    return {"kl_fwd": 2 + priors, "kl_bwd": grad + 2 + priors, "bce_fwd": 2 + weights, "bce_bwd": grad + 2 + weights,
            "gnll_fwd": 3, "gnll_bwd": grad + 3, "sample_fwd": 2,
            "sample_bwd": 2 + int(bool(consts.get("REDUCE")))}[name]


SASS_LINE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(.*?);")


def loops_of(sass):
    """(lines, [(start, end)]): the SASS and the address ranges of its backward branches (loops)."""
    lines = [(int(a, 16), text) for a, text in SASS_LINE.findall(sass)]
    loops = []
    for addr, text in lines:
        target = re.search(r"\bBRA\b.*?0x([0-9a-f]+)\s*$", text)
        if target and int(target.group(1), 16) < addr:
            loops.append((int(target.group(1), 16), addr))
    return lines, loops


def check_loops(sass):
    lines, loops = loops_of(sass)
    bad = set()
    for start, end in loops:
        for addr, text in lines:
            if start <= addr <= end and re.search(r"\b(MEMBAR|CCTL|FENCE|ATOM|ATOMG|RED)\b", text):
                bad.add(text.strip())
    return [f"inside a loop: {sorted(bad)}"] if bad else []


def check_local(ptx, sass):
    bad = []
    if re.search(r"\b(ld|st)\.local", ptx):
        bad.append("PTX ld/st.local")
    if re.search(r"\b(LDL|STL)\b", sass):
        bad.append("SASS LDL/STL")
    return bad


# ---------------------------------------------------------------- the RNG's instruction sequence

@triton.jit
def box_muller_kernel(u_ptr, out_ptr, BLOCK: tl.constexpr):
    i = tl.arange(0, BLOCK)
    n1, n2 = vm.box_muller(tl.load(u_ptr + 2 * i), tl.load(u_ptr + 2 * i + 1))
    tl.store(out_ptr + 2 * i, n1)
    tl.store(out_ptr + 2 * i + 1, n2)


def f32_hex(x: float) -> str:
    return "0f" + struct.pack(">f", x).hex().upper()


def _instr(op, *consts):
    return (op, tuple(f32_hex(c) for c in consts))


POLY = (7.0376836292e-2, -1.1514610310e-1, 1.1676998740e-1, -1.2420140846e-1, 1.4249322787e-1,
        -1.6668057665e-1, 2.0000714765e-1, -2.4999993993e-1, 3.3333331174e-1)
# docs/rng.md step 4 for one pair: every float32 PTX instruction and its float32 immediates. Integer
# ops and selects of bits (u1 = max(u1, 1e-7) becomes selp.b32) carry no .f32 and are not listed.
RNG_COMMON = collections.Counter(
    [_instr("setp.lt.f32", 0.70710678118654752),  # small
     _instr("mul.f32")]  # z = m * m
    + [_instr("fma.rn.f32", POLY[0], POLY[1])]  # y = fma(c0, m, c1): both immediates
    + [_instr("fma.rn.f32", c) for c in POLY[2:]]
    + [_instr("mul.f32"), _instr("mul.f32"),  # y * m, y * z
       _instr("cvt.rn.f32.s32"),  # ef
       _instr("fma.rn.f32", -2.12194440e-4), _instr("fma.rn.f32", -0.5),
       _instr("add.f32"),  # t = m + y
       _instr("fma.rn.f32", 0.693359375),
       _instr("mul.f32", -2.0),  # -2 * L
       _instr("sqrt.approx.f32"),
       _instr("mul.f32", 6.283185307179586),  # th
       _instr("cos.approx.f32"), _instr("sin.approx.f32"),
       _instr("mul.f32"), _instr("mul.f32")])  # r * c, r * s
# Forms LLVM may give two selects, each exact (same bits for every input):
# u1 = u1 > 1e-7 ? u1 : 1e-7 as a compare + selp.b32, or max.f32 (u1 is never NaN);
# m = small ? (m + m) - 1 : m - 1 as written, or ((small ? m : -0.0) + m) - 1 (-0 + m == m).
RNG_CLAMP = (collections.Counter([_instr("setp.gt.f32", 1e-7)]), collections.Counter([_instr("max.f32", 1e-7)]))
RNG_SELECT = (collections.Counter([_instr("add.f32"), _instr("add.f32", -1.0), _instr("add.f32", -1.0),
                                   _instr("selp.f32")]),
              collections.Counter([_instr("selp.f32", -0.0), _instr("add.f32"), _instr("add.f32", -1.0)]))
RNG_FORMS = [RNG_COMMON + clamp + select for clamp in RNG_CLAMP for select in RNG_SELECT]


def f32_instructions(ptx):
    """(opcode, float32 immediates) of every float32 PTX instruction."""
    out = []
    for line in ptx.splitlines():
        m = re.match(r"\s*(?:@!?%p\d+\s+)?([a-z][a-z0-9.]*)\s+(.*);", line)
        if m and ".f32" in m.group(1):
            out.append((m.group(1), tuple(re.findall(r"0f[0-9A-F]{8}", m.group(2)))))
    return collections.Counter(out)


def check_rng(arch):
    """One pair through math.box_muller compiles to exactly the contract's float32 instructions:
    nothing contracted into an extra fma, no ftz, no libdevice slow path, no call."""
    target = GPUTarget("cuda", arch, 64 if arch >= 90 else 32)
    ck = triton.compile(ASTSource(box_muller_kernel, {"u_ptr": "*fp32", "out_ptr": "*fp32", "BLOCK": "constexpr"},
                                  {(2,): 128}), target=target, options={"num_warps": 4})
    ptx = ck.asm["ptx"]
    got = f32_instructions(ptx)
    bad = []
    if got not in RNG_FORMS:
        nearest = min(RNG_FORMS, key=lambda form: sum(((got - form) + (form - got)).values()))
        extra, missing = got - nearest, nearest - got
        bad.append(f"extra {dict(extra)}, missing {dict(missing)}")
    if re.search(r"\bcall\b|\.local", ptx):
        bad.append("a call or local memory")
    return bad, ptx


def inductor_copy(kernel, workdir: str):
    """The kernel as inductor compiles it under torch.compile: the source its wrapper codegen writes
    (the kernel and the helpers it reaches), loaded from a file as a JITFunction."""
    import importlib.util

    from torch._inductor.codegen.wrapper import user_defined_triton_kernel_transitive_closure_source_code
    name = kernel.fn.__name__
    path = os.path.join(workdir, f"inductor_{name}.py")
    with open(path, "w") as f:
        f.write("import triton\nimport triton.language as tl\n\n@triton.jit\n"
                + user_defined_triton_kernel_transitive_closure_source_code(kernel))
    spec = importlib.util.spec_from_file_location(f"inductor_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, name)


def main() -> int:
    dump = sys.argv[sys.argv.index("--dump") + 1] if "--dump" in sys.argv else None
    if dump:
        os.makedirs(dump, exist_ok=True)
    ops.wrap_triton = Recorder
    exercise()
    failures = collections.Counter()

    def fail(check, what, detail):
        failures[check] += 1
        print(f"FAIL {check} {what}: {detail}", file=sys.stderr)

    counts = collections.Counter()
    for arch in ARCHS:
        target = GPUTarget("cuda", arch, 64 if arch >= 90 else 32)
        backend = make_backend(target)
        seen = set()
        todo = []  # the distinct launches, compiled below in parallel (one process per core)
        by_scale = collections.defaultdict(set)  # the launch but for its scale -> compiled variants
        for kernel, args, kwargs in launches:
            signature, constexprs, attrs, options = specialise(kernel, args, kwargs, backend)
            name = kernel.fn.__name__
            key = (name, tuple(signature.items()), tuple(sorted(constexprs.items())),
                   tuple(sorted((k, str(v)) for k, v in attrs.items())), options.num_warps)
            if "scale_bits" in kernel.arg_names:
                i = kernel.arg_names.index("scale_bits")
                by_scale[(name, tuple((a.dtype, tuple(a.shape)) if isinstance(a, torch.Tensor) else a
                                      for j, a in enumerate(args) if j != i),
                          tuple(sorted(kwargs.items())))].add(key)
            if key in seen:
                continue
            seen.add(key)
            todo.append((kernel, args, signature, constexprs, attrs, options))
        _jobs[:] = [(arch, target, *job) for job in todo]
        with multiprocessing.get_context("fork").Pool(os.cpu_count() or 1) as pool:
            results = pool.map(_compile, range(len(_jobs)), chunksize=1)
        for n, ((kernel, args, signature, constexprs, attrs, options), (ptx, sass, error)) in enumerate(
                zip(todo, results), 1):
            name = kernel.fn.__name__
            consts = {kernel.arg_names[p[0]]: v for p, v in constexprs.items()}
            what = f"sm_{arch} {name} {consts}"
            if error is not None:  # report all, then fail
                fail("compile", what, error)
                continue
            counts[arch] += 1
            if arch != 90:
                continue
            if dump:
                base = os.path.join(dump, f"{n:03d}_{name}")
                open(base + ".ptx", "w").write(ptx)
                open(base + ".sass", "w").write(sass)
                open(base + ".txt", "w").write(f"{what}\n{signature}\n{attrs}\n")
            checks = {"loop": check_loops(sass), "local": check_local(ptx, sass)}
            if consts.get("F64"):
                checks["f64"] = check_f64(name, ptx)
            c_arg = kernel.arg_names.index("C")
            tensors = [a for a in args if isinstance(a, torch.Tensor)]
            if (name in VECTOR_CHECKED and tensors[0].dtype == torch.float32 and isinstance(args[c_arg], int)
                    and args[c_arg] % 16 == 0
                    and consts["BLOCK_C"] * consts["BLOCK_R"] >= 4 * 32 * options.num_warps):
                n_inputs = elementwise_inputs(name, consts)
                per_thread = consts["BLOCK_C"] * consts["BLOCK_R"] // (32 * options.num_warps)
                checks["vector"] = check_vector(ptx, sass, n_inputs, per_thread)
                counts["vector"] += 1
            for check, bad in checks.items():
                for b in bad:
                    fail(check, what, b)
        if arch == 90:  # one launch per kernel, compiled from inductor's copy of its source
            first = {}
            for kernel, args, signature, constexprs, attrs, options in todo:
                first.setdefault(kernel.fn.__name__, (kernel, args, signature, constexprs, attrs, options))
            with tempfile.TemporaryDirectory() as workdir:
                copies = []
                for name, (kernel, *rest) in first.items():
                    try:
                        copies.append((name, (arch, target, inductor_copy(kernel, workdir), *rest)))
                    except Exception as exc:
                        fail("inductor", f"sm_90 {name}", f"no copy: {type(exc).__name__}: {exc}")
                _jobs[:] = [job for _, job in copies]
                with multiprocessing.get_context("fork").Pool(os.cpu_count() or 1) as pool:
                    results = pool.map(_compile, range(len(_jobs)), chunksize=1)
            for (name, _), (_, _, error) in zip(copies, results):
                if error is not None:
                    fail("inductor", f"sm_90 {name}", error)
                else:
                    counts["inductor"] += 1
        if arch == 90:  # one-row launches again with a row of 2^31 + BLOCK_C elements
            probed = set()
            for kernel, args, kwargs in launches:
                name = kernel.fn.__name__
                if name in probed or "C" not in kernel.arg_names or kwargs.get("F64"):
                    continue
                _, constexprs, _, _ = specialise(kernel, args, kwargs, backend)
                if {kernel.arg_names[p[0]]: v for p, v in constexprs.items()}.get("R") != 1:
                    continue
                probed.add(name)
                block_c = kwargs["BLOCK_C"]
                big = list(args)
                big[kernel.arg_names.index("C")] = 2 ** 31 + block_c
                sig, cx, at, opts = specialise(kernel, tuple(big), kwargs, backend)
                try:
                    ptx = triton.compile(ASTSource(kernel, sig, cx, at), target=target, options=opts.__dict__).asm["ptx"]
                except Exception as exc:
                    fail("index64", f"sm_90 {name}", f"does not compile: {str(exc)[-400:]}")
                    continue
                shift = block_c.bit_length() - 1
                wrapped = re.findall(rf"(?:shl\.b32\s+%r\d+, %r\d+, {shift}|mul\.lo\.s32\s+%r\d+, %r\d+, {block_c});", ptx)
                if sig.get("C") != "i64" or wrapped:
                    fail("index64", f"sm_90 {name} C={big[kernel.arg_names.index('C')]} ({sig.get('C')})",
                         f"32-bit column index: {wrapped[:2]}")
                else:
                    counts["index64"] += 1
        for launch, keys in by_scale.items():
            if len(keys) > 1:
                fail("respecialise", f"sm_{arch} {launch[0]}", f"{len(keys)} compiled variants for different scales")
    for arch in ARCHS:
        try:
            bad, ptx = check_rng(arch)
        except Exception as exc:
            bad, ptx = [f"does not compile: {str(exc)[-800:]}"], ""
        if dump:
            open(os.path.join(dump, f"box_muller_sm{arch}.ptx"), "w").write(ptx)
        for b in bad:
            fail("rng", f"sm_{arch} box_muller", b)
    print(f"compiled {counts[80]} distinct launches for sm_80 and {counts[90]} for sm_90 "
          f"({counts['vector']} checked for 16-byte loads, {counts['inductor']} as inductor copies them, "
          f"{counts['index64']} with 2^31-element rows): "
          f"{sum(failures.values())} failed "
          f"{dict(failures)}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
