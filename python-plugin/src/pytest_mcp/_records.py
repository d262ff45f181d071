"""The record the test thread hands to the sender: a plain tuple, cheap to build.

Indexes into the tuple; the reporter builds records, the sender turns them
into protobuf Outcomes or spool lines.
"""

NODEID = 0
OUTCOME = 1  # "passed" "failed" "skipped" "error" "xfailed" "xpassed"
PHASE = 2  # "collect" "setup" "call" "teardown" or None
DURATION = 3
MESSAGE = 4
LONGREPR = 5
STDOUT = 6
STDERR = 7
LOG = 8
FILE = 9
LINE = 10  # 1-based, or None
MARKERS = 11  # tuple or list of names
WORKER = 12
ATTEMPT = 13
STARTED = 14  # seconds since the epoch, or None
SUBTEST = 15  # the subtest's label, e.g. "[even] (i=1)"; "" for the test itself
PROPERTIES = 16  # (name, value) text pairs from record_property; () for none
QUARANTINED = 17  # True when the test ran under quarantine (--mcp-quarantine)
# None: not recorded (--mcp-deps off, a subtest, a collection error, or a
# test whose set may be incomplete); else a tuple of unit keys (ints), each in
# the units dict (key -> unit tuple, see _deps) the reporter shares with the sender.
DEPS = 18

# Captured output: kept only for outcomes that did not pass, unless the
# recorder asks for passing tests' output too.
OUTPUT_FIELDS = (STDOUT, STDERR, LOG)

# (spool / JSON key, index) of the free-text fields.
TEXT_FIELDS = (
    ("message", MESSAGE),
    ("longrepr", LONGREPR),
    ("stdout", STDOUT),
    ("stderr", STDERR),
    ("log", LOG),
    ("file", FILE),
    ("worker", WORKER),
    ("subtest", SUBTEST),
)
