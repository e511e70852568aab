"""What more than one part of Linewatch must agree on, written once.

The trainer, the exporter, the torch-free edge, the refresh job and the tests all import this
package; it imports none of them, and nothing heavier than numpy and OpenCV. Keeping a contract
here (rather than a copy per part) is what stops train/serve skew by construction.
"""
