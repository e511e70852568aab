"""The model beside the frame path: bundles opened and verified (bundle, signing), TensorRT plans
built and cached (trt_build, trt_plans), and hot swaps between frames (manager)."""
