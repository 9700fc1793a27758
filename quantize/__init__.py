"""The offline quantizer: RTN with clipping search, GPTQ, ternary; packing."""
