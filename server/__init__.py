"""jangteo: the realtime backend of a neighbourhood second-hand marketplace."""
