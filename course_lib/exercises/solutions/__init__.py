"""Reference solutions of the exercises, one module per lesson. Try first, then peek."""
