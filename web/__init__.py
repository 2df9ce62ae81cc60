"""The HTTP surfaces next to the app factory: one blueprint module per surface, plus shared resources."""
