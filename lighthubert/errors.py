"""The library's exceptions share one base, :class:`LightHubertError`: its message is one line that
names the file (or setting) and the reason, fit to show a user as is. :class:`SettingError` marks a
bad value given by the caller (a command-line tool reports it as a usage error)."""

from __future__ import annotations


class LightHubertError(Exception):
    """Base of every error the library raises on purpose; ``str(err)`` is one line for the user."""


class SettingError(LightHubertError, ValueError):
    """A bad setting value (layers, device, dtype, subnet, ...); ``setting`` names it when known."""

    def __init__(self, message: str, setting: str | None = None):
        super().__init__(message)
        self.setting = setting


class WaveformError(LightHubertError, ValueError):
    """Audio given to the model that it cannot take (a waveform's shape, dtype or samples, a padded
    batch's lengths); the message says which one and what to pass instead."""


def kind_of(x: object) -> str:
    """A value's kind, as messages say it: ``None``, ``an int``, ``a generator``."""
    if x is None:
        return "None"
    name = type(x).__name__
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"


class LightHubertWarning(UserWarning):
    """Something the user should know that does not stop the work (``warnings.warn``); ``lhb`` shows
    it as one line, ``lhb: warning: ...``."""


__all__ = ["LightHubertError", "LightHubertWarning", "SettingError", "WaveformError", "kind_of"]
