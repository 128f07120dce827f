import onnx, numpy as np
from onnx import helper as h, TensorProto as T, numpy_helper as nh
rng=np.random.default_rng(0)
def mk(M,K,N,name):
    W=nh.from_array(rng.standard_normal((K,N)).astype(np.float32)*0.05,'W')
    B=nh.from_array(rng.standard_normal((N,)).astype(np.float32),'B')
    nodes=[h.make_node('MatMul',['x','W'],['h']),h.make_node('Add',['h','B'],['hb']),
           h.make_node('Gelu',['hb'],['y'],domain='')]
    g=h.make_graph(nodes,'mm',[h.make_tensor_value_info('x',T.FLOAT,['seq',K])],[h.make_tensor_value_info('y',T.FLOAT,['seq',N])],[W,B])
    m=h.make_model(g,opset_imports=[h.make_opsetid('',20)])
    onnx.save(m,name)
mk(128,384,384,'mm384.onnx')
mk(128,384,1536,'mm1536.onnx')
