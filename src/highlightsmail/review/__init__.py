"""Review: what the editor looks at before sending: `check` (lint, deceptive links), the
live preview and `build`."""
