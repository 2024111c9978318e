"""The pure core: metering decisions (dedupe, lateness, folds), push planning, reconciliation
comparison and replay planning. No I/O: state and clocks are passed in; adapters do the talking."""
