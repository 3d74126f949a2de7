"""fedcare: federated learning for healthcare."""
