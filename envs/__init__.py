"""Task families (registry ``env``). Each module registers its family with ``@register_env``."""
