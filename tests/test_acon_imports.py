"""The acon package's import layout: entries register into a leaf registry, nothing imports back up."""
import subprocess
import sys

from acon.modules import MetaAcon, MetaAconC


def test_registrants_register_without_importing_the_public_activations_module():
    """``acon.gated`` and ``acon.rivals`` add their entries to the leaf registry without loading
    ``acon.activations``; importing ``acon.activations`` then lists them with the core entries."""
    probe = ("import sys, acon.gated, acon.rivals\n"
             "from acon._activation_registry import ACTIVATIONS\n"
             "before = 'acon.activations' in sys.modules\n"
             "import acon.activations\n"
             "print(before, 'se_control' in ACTIVATIONS, 'dy_relu_b' in ACTIVATIONS, 'meta_acon' in ACTIVATIONS,\n"
             "      acon.activations.ACTIVATIONS is ACTIVATIONS)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["False", "True", "True", "True", "True"], out.stderr


def test_meta_acon_classes_share_one_forward_and_differ_only_in_where_beta_comes_from():
    assert MetaAcon.forward is MetaAconC.forward
    assert MetaAcon._generate_beta is not MetaAconC._generate_beta
