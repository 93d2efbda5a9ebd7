"""The suite's rule for warnings (``tests/_warnings.py``): prefdyn's calls, not libraries' internals."""

import logging
import types
import warnings

from tests._warnings import prefdyn_warnings


def _module(name: str, source: str) -> types.ModuleType:
    module = types.ModuleType(name)
    exec(compile(source, f"<{name}>", "exec"), module.__dict__)
    return module


LIB = _module("fakelib.api", "import logging, warnings\n"
                             "def old():\n"
                             "    warnings.warn('old() is deprecated', FutureWarning, stacklevel=2)\n"
                             "def logged(message):\n"
                             "    logging.getLogger('fakelog.api').warning(message)\n")
OTHER_LIB = _module("otherlib.wrap", "def wrap(f, *args):\n    return f(*args)\n")
PREFDYN = _module("prefdyn._caller", "def call(f, *args):\n    return f(*args)\n")


def _found(fn, *args) -> tuple[list[str], list]:
    with warnings.catch_warnings(record=True) as shown:  # away from the suite's own guard
        warnings.simplefilter("always")
        with prefdyn_warnings(loggers=("fakelog",)) as found:
            fn(*args)
    return found, shown


def test_a_library_warning_caused_by_a_prefdyn_call_is_prefdyns():
    found, shown = _found(PREFDYN.call, LIB.old)
    assert found == ["FutureWarning from prefdyn._caller:2: old() is deprecated"]
    assert [str(w.message) for w in shown] == ["old() is deprecated"]  # still shown as usual


def test_a_library_warning_from_another_librarys_call_or_a_tests_is_not():
    assert _found(PREFDYN.call, OTHER_LIB.wrap, LIB.old)[0] == []
    assert _found(LIB.old)[0] == []


def test_prefdyns_own_warning_is_prefdyns():
    source = "import warnings\ndef warn():\n    warnings.warn('cache is corrupt', stacklevel=2)\n"
    own = _module("prefdyn._own", source)
    assert _found(own.warn)[0] == ["UserWarning from prefdyn._own:3: cache is corrupt"]


def test_logged_deprecations_are_checked_too():
    logging.getLogger("fakelog").propagate = False
    found, _ = _found(PREFDYN.call, LIB.logged, "`x` is deprecated, use `y`")
    assert found == ["fakelog.api logged, called from prefdyn._caller:2: `x` is deprecated, use `y`"]
    assert _found(PREFDYN.call, LIB.logged, "loading weights")[0] == []
