"""vitlab's built-in demo data: 3,000 training and 1,000 test images of Fashion-MNIST (28x28 grey),
300 and 100 per class, chosen by tools/make_demo_data.py. Fashion-MNIST is (c) 2017 Zalando SE,
MIT licence (LICENSE-fashion-mnist.txt); Xiao, Rasul and Vollgraf, arXiv:1708.07747.
"""
