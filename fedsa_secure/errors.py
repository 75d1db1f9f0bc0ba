"""Exception hierarchy: every error a user can meet says what was wrong and what to do."""


class FedsaError(Exception):
    """Base of every error fedsa-secure raises on purpose."""


class ConfigError(FedsaError):
    """A configuration file or value is invalid; the message names the key and allowed values."""


class KeyMaterialError(FedsaError):
    """A key or certificate file is missing, unreadable or does not match; the message names the file."""


class IntegrityError(FedsaError):
    """Authenticated data failed verification (tampered ciphertext, wrong key, wrong context)."""


class SignatureError(IntegrityError):
    """A signature does not verify under the certified key of the party it claims to come from."""


class ProtocolError(FedsaError):
    """A secure-aggregation message is out of order, repeated, malformed or from another session."""


class AbortRound(FedsaError):
    """The round cannot complete safely (e.g. fewer than t survivors); nothing is revealed."""


class BudgetExhausted(FedsaError):
    """Training this round would exceed the node's privacy budget."""


class BudgetsExhausted(FedsaError):
    """Too few nodes have budget left for another round's cohort: the run ends here, cleanly."""


class LedgerError(FedsaError):
    """The privacy ledger is corrupt, edited, reordered or truncated."""


class TransportError(FedsaError):
    """A peer could not be reached or answered with an error."""
