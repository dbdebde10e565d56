"""The op schemas, one place for Python. The native extension registers the same strings in
csrc/ops.cpp (namespace `vae_fast`); the Triton backend registers them under `vae_fast_triton`.
tests/test_schemas.py checks the two agree. Semantics: docs/ops.md.
"""

# reduction codes passed to the ops (the Python layer maps "mean"/"batchmean" to SUM + scale)
NONE, SUM, ROWS = 0, 1, 2

SCHEMAS = {
    "reparameterize": "(Tensor mu, Tensor logvar, Tensor philox, int num_samples) -> Tensor",
    "reparameterize_backward":
        "(Tensor grad_z, Tensor logvar, Tensor philox, int num_samples) -> Tensor",
    "sample_and_kl":
        "(Tensor mu, Tensor logvar, Tensor philox, int num_samples) -> (Tensor, Tensor)",
    "sample_and_kl_backward":
        "(Tensor grad_z, Tensor grad_kl, Tensor mu, Tensor logvar, Tensor philox, int num_samples)"
        " -> (Tensor, Tensor)",
    "gaussian_kl":
        "(Tensor mu, Tensor logvar, Tensor? prior_mu, Tensor? prior_logvar, int reduction,"
        " float scale) -> Tensor",
    "gaussian_kl_backward":
        "(Tensor grad, Tensor mu, Tensor logvar, Tensor? prior_mu, Tensor? prior_logvar,"
        " int reduction, float scale) -> (Tensor, Tensor, Tensor)",
    "bernoulli_nll": "(Tensor logits, Tensor target, int reduction, float scale) -> Tensor",
    "bernoulli_nll_backward":
        "(Tensor grad, Tensor logits, Tensor target, int reduction, float scale, bool target_grad)"
        " -> (Tensor, Tensor)",
    "gaussian_nll":
        "(Tensor mean, Tensor logvar, Tensor target, int reduction, float scale) -> Tensor",
    "gaussian_nll_backward":
        "(Tensor grad, Tensor mean, Tensor logvar, Tensor target, int reduction, float scale)"
        " -> (Tensor, Tensor)",
    # multi-sample objectives (vae_fast/iwae.py): prior_coef * log N(z; 0, 1) + q_coef * log N(z; mu,
    # e^logvar), z (R, C), mu and logvar (B, C) with R a multiple of B (row r uses row r % B); without
    # mu and logvar (None) q_coef is ignored
    "log_density":
        "(Tensor z, Tensor? mu, Tensor? logvar, float prior_coef, float q_coef, int reduction,"
        " float scale) -> Tensor",
    "log_density_backward":
        "(Tensor grad, Tensor z, Tensor? mu, Tensor? logvar, float prior_coef, float q_coef,"
        " int reduction, float scale, bool params_grad) -> (Tensor, Tensor, Tensor)",
}
