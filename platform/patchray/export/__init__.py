"""From checkpoint to servable IR: OpenVINO export behind the Keras parity gate
(``openvino_export``), INT8 with NNCF (``quantize``), and every precision measured and
gated on validation (``precisions``). The model card and registry are in
:mod:`patchray.registry`."""
