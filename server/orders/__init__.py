"""Orders: purchases under four locking strategies, completion and cancellation with escrow."""
