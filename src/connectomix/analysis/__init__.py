"""Structure meets function: cell types (``celltypes``), orientation tuning (``tuning``), like-to-like connectivity
(``like_to_like``) and figures (``figures``). ``connectomix analysis`` (``analysis.cli``) runs them all."""
