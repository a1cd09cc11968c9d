import numpy as np, jax
from sasmamba_jax.checkpoint import load_model
from sasmamba_jax.inference import predict
d = np.load("tests/data/official_tiny.npz")
for prec in ["default", "highest"]:
    with jax.default_matmul_precision(prec):
        for scan in ["associative", "chunked", "sequential"]:
            m = load_model("tests/data/official_tiny.pth", scan=scan)
            y = np.asarray(predict(m, d["x"]))
            print(f"parity {prec:8s} {scan:12s} max abs err {np.abs(y - d['y']).max():.2e}", flush=True)
