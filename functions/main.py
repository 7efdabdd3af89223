"""Cloud Run functions entry points: one function per deployed target, each thin.

Each validates its input, calls one use case, and maps the outcome to the contract's JSON answer
(contract section 5). No SQL and no LLM calls here; heavy libraries are imported where they are used.
"""

from __future__ import annotations

import functions_framework
import flask

from planbus import bootstrap
from planbus.http import Response
