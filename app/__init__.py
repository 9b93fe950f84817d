"""optin-backend: marketing clicks to SMS/iMessage subscribers."""
