"""DQL, the ModelHub query language: ``repo.query('select m where ...')``.

``parser`` turns text into a statement tree (grammar in ``dql.lark``), ``compiler``
turns a select into SQL over the catalog, ``engine`` runs it. docs/DQL.md is the
reference.
"""

from modelhub_torch.dql.engine import QueryResult
from modelhub_torch.dql.parser import parse
from modelhub_torch.errors import DQLError

__all__ = ["DQLError", "QueryResult", "parse"]
