"""The normalization kinds by name, torch-free: the CLI checks a `--swap` before torch loads,
and `unfold.nn.create_norm` builds them."""

NORM_KINDS = ("ln", "un", "pn", "pn*", "none")
# the offline ones: what `unfold.nn.swap_norms` puts in a LayerNorm's place
OFFLINE_KINDS = ("un", "pn", "pn*")
