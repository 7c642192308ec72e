"""The HTTP API of posflow: starts applications, answers status, takes the services' signed
callbacks and people's actions, and keeps the merchant file and the audit trail."""
