"""meta-ACON's rivals: the other learned and dynamic activations, as entries of ``acon.activations.ACTIVATIONS``.

| entry | idea | source |
|---|---|---|
| ``dy_relu_a``, ``dy_relu_b``, ``dy_relu_c`` | max over K linear pieces whose slopes and intercepts a squeeze-excite branch predicts: A shared across the layer, B per channel, C per channel and position | Chen et al., "Dynamic ReLU", ECCV 2020 |
| ``frelu`` | max(x, T(x)), T a depthwise k x k conv + BN | Ma et al., "Funnel Activation for Visual Recognition", ECCV 2020 |
| ``pau`` | a learned rational function P(x) / Q(x), degrees (5, 4), safe denominator | Molina et al., "Padé Activation Units", ICLR 2020 |
| ``smu`` | a smooth maximum of x and a leaky line through erf, learned smoothness | Biswas et al., "SMU", 2021 |
| ``apa`` | a learned generalisation of the sigmoid / Gumbel gate | Alexandridis et al., "Adaptive Parametric Activation", ECCV 2024 |

Each module registers its entries, with their options and analytic cost (``complexity=``), on import into the
registry's leaf module ``acon._activation_registry``; ``acon.activations`` imports this package.
"""
from acon.rivals import apa, dy_relu, frelu, pau, smu  # noqa: F401  (each registers its entries on import)
