"""The op schemas, one place for Python. The native extension registers the same strings in
csrc/ops.cpp (namespace `vae_fast`); the Triton backend registers them under `vae_fast_triton`.
tests/test_schemas.py checks the two agree. Semantics: docs/ops.md.
"""

# reduction codes passed to the ops (the Python layer maps "mean"/"batchmean" to SUM + scale)
NONE, SUM, ROWS = 0, 1, 2

# The sampling and KL ops take optional bounds `logvar_min`, `logvar_max` (None: no bound): logvar is
# clamped to them inside the kernels, with torch.clamp's gradient (zero outside), as diffusers does.

SCHEMAS = {
    "reparameterize": "(Tensor mu, Tensor logvar, Tensor philox, int num_samples, float? logvar_min=None, float? logvar_max=None) -> Tensor",
    "reparameterize_backward":
        "(Tensor grad_z, Tensor logvar, Tensor philox, int num_samples, float? logvar_min=None, float? logvar_max=None) -> Tensor",
    "sample_and_kl":
        "(Tensor mu, Tensor logvar, Tensor philox, int num_samples, float? logvar_min=None, float? logvar_max=None) -> (Tensor, Tensor)",
    "sample_and_kl_backward":
        "(Tensor grad_z, Tensor grad_kl, Tensor mu, Tensor logvar, Tensor philox, int num_samples,"
        " float? logvar_min=None, float? logvar_max=None) -> (Tensor, Tensor)",
    "gaussian_kl":
        "(Tensor mu, Tensor logvar, Tensor? prior_mu, Tensor? prior_logvar, int reduction,"
        " float scale, ScalarType? out_dtype=None, float? logvar_min=None, float? logvar_max=None)"
        " -> Tensor",
    "gaussian_kl_backward":
        "(Tensor grad, Tensor mu, Tensor logvar, Tensor? prior_mu, Tensor? prior_logvar,"
        " int reduction, float scale, float? logvar_min=None, float? logvar_max=None) -> (Tensor, Tensor, Tensor)",
    # weight / pos_weight (F.binary_cross_entropy_with_logits) have logits' shape; out_dtype: the
    # forward output's dtype (None: the inputs'; float32 under autocast, see _autocast.py)
    "bernoulli_nll":
        "(Tensor logits, Tensor target, int reduction, float scale, Tensor? weight=None,"
        " Tensor? pos_weight=None, ScalarType? out_dtype=None) -> Tensor",
    "bernoulli_nll_backward":
        "(Tensor grad, Tensor logits, Tensor target, int reduction, float scale, bool target_grad,"
        " Tensor? weight=None, Tensor? pos_weight=None) -> (Tensor, Tensor)",
    "gaussian_nll":
        "(Tensor mean, Tensor logvar, Tensor target, int reduction, float scale,"
        " ScalarType? out_dtype=None) -> Tensor",
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
