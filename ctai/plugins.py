"""Builds the plugin manager: built-in and third-party plugins alike come from entry points."""

from __future__ import annotations

import pluggy

from ctai import hookspecs
from ctai.config import Config
from ctai.types import Sender

ENTRY_POINT_GROUP = "ctai"


def plugin_manager(config: Config) -> pluggy.PluginManager:
    """A plugin manager with every ``ctai`` entry point loaded, less ``[plugins] disabled``."""
    pm = pluggy.PluginManager("ctai")
    pm.add_hookspecs(hookspecs)
    for name in config.get("plugins", {}).get("disabled", []):
        pm.set_blocked(name)
    pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    pm.check_pending()
    return pm


def describe(pm: pluggy.PluginManager) -> list[dict[str, object]]:
    """Name, module and implemented hooks of each loaded plugin (for ``ctai plugins``)."""
    rows = []
    for name, plugin in pm.list_name_plugin():
        if plugin is None:  # blocked by configuration
            continue
        hooks = sorted(caller.name for caller in pm.get_hookcallers(plugin) or [])
        rows.append({"name": name, "module": getattr(plugin, "__name__", repr(plugin)), "hooks": hooks})
    return rows


def outbox_senders(pm: pluggy.PluginManager, config: Config) -> dict[str, Sender]:
    """Every outbox channel's sender, from the plugins' ``ctai_outbox_senders``; a channel that two
    plugins claim is a ``ValueError``."""
    senders: dict[str, Sender] = {}
    for provided in pm.hook.ctai_outbox_senders(config=config):
        for channel, sender in (provided or {}).items():
            if channel in senders:
                raise ValueError(f"two plugins send the outbox channel {channel!r}")
            senders[channel] = sender
    return senders
