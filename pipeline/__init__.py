"""DVC stage entry points: one thin module per stage over the summarizer library."""
