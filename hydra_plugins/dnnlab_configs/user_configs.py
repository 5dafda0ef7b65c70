"""Hydra SearchPathPlugin: a user's `./configs` (or `$DNNLAB_CONFIGS`) extends dnnlab's config groups.

Hydra discovers it in the `hydra_plugins` namespace package; it acts only on dnnlab's own apps
(a search path that holds `pkg://dnnlab.conf`), so other Hydra apps are left alone.
"""
from __future__ import annotations

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin


class DnnlabUserConfigs(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        from dnnlab.config.catalog import user_configs

        # hydra.main names it pkg://dnnlab/conf, the compose API pkg://dnnlab.conf
        if not any((e.path or "").replace("/", ".").endswith("dnnlab.conf") for e in search_path.get_path()):
            return
        folder = user_configs()
        if folder is not None:  # after the packaged configs: a packaged option keeps its name
            search_path.append(provider="dnnlab-user", path=f"file://{folder}")
