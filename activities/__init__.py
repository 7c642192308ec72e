"""Activities: document validation and the clients of the review, contract, device, logistics and
notification services."""
