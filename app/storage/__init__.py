"""Storage backends behind one interface (`app.storage.base.Store`)."""
