"""Who may call what: tenants, scoped API keys, node credentials.

:mod:`edgerun.auth.scopes` is pure (names, scopes, principals and the
decision whether one may act on a function); :mod:`edgerun.auth.keys` holds
the key records that travel on the change feed and the keyring every node
verifies requests against.
"""

from edgerun.auth.keys import (
    KeyEntry,
    Keyring,
    NodeCredential,
    digest,
    new_key_id,
    new_secret,
)
from edgerun.auth.scopes import (
    DEFAULT_TENANT,
    Kind,
    Principal,
    Scope,
    parse_scope,
    short_name,
    tenant_of,
    validate_tenant,
)

__all__ = [
    "DEFAULT_TENANT",
    "KeyEntry",
    "Keyring",
    "Kind",
    "NodeCredential",
    "Principal",
    "Scope",
    "digest",
    "new_key_id",
    "new_secret",
    "parse_scope",
    "short_name",
    "tenant_of",
    "validate_tenant",
]
